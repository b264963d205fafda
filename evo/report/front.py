"""The best trials: with one objective, the optimisation history; with several, the
Pareto front on two of them."""

from __future__ import annotations

import itertools

import plotly.graph_objects as go
from plotly.colors import qualitative

from evo.report.frames import ranked
from evo.report.labels import axis_title, hover_texts
from evo.report.markup import figure, note, section
from evo.report.run import Run
from evo.report.ticks import round_ticks
from evo.summary import pareto_front
from llm.errors import UserError

# A legend in a row above the plot, clear of the plot, its axes and any colour bar.
_LEGEND_ABOVE = {"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"}


def history_section(run: Run) -> str:
    """With one objective there is no front to draw: its values in trial order, and the
    best so far."""
    first, finished = run.objectives[0], run.finished
    how = (
        f"The optimisation history: each successful trial's {first.metric}{run.where} in "
        "the order trials were made (stalled trials left out), and the best so far; the "
        "best trial is circled. Hover for genome and metrics."
    )
    if finished.empty:
        return section("history", "Optimisation history", how, note(run.empty))
    ordered = finished.sort_values("trial_id")
    trials = go.Scatter(
        x=ordered["trial_id"],
        y=ordered[first.metric],
        mode="markers",
        name="trial",
        marker={"color": qualitative.Plotly[0]},
        hovertext=hover_texts(ordered),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    line = go.Scatter(
        x=ordered["trial_id"],
        y=(ordered[first.metric] * first.sign).cummin() * first.sign,
        mode="lines",
        line={"shape": "hv", "color": qualitative.Plotly[1]},
        name="best so far",
    )
    top = ranked(finished, first).head(1)
    circle = go.Scatter(
        x=top["trial_id"],
        y=top[first.metric],
        mode="markers",
        name="best trial",
        marker={"size": 16, "symbol": "circle-open", "color": "crimson", "line": {"width": 2}},
    )
    fig = go.Figure([trials, line, circle])
    fig.update_layout(
        height=480,
        xaxis={
            "title": {"text": "trial"},
            **round_ticks(ordered["trial_id"], whole=True).axis(0.5),
        },
        yaxis_title=axis_title(first),
        legend=_LEGEND_ABOVE,
    )
    return section("history", "Optimisation history", how, figure(fig))


def pareto_section(run: Run, front_axes: tuple[str, str] | None = None) -> str:
    by_metric = {o.metric: o for o in run.objectives}
    if front_axes is not None and not set(front_axes) <= set(by_metric):
        raise UserError(f"front: {list(front_axes)} are not two of the run's objectives")
    first, second = run.objectives[:2] if front_axes is None else [by_metric[m] for m in front_axes]
    how = (
        f"Every successful trial{run.where} on {first.metric} and {second.metric} (stalled "
        "trials left out); the circled, connected trials are the Pareto front over all "
        "objectives: none is beaten in every objective by another. Hover for genome and "
        "metrics."
    )
    pairs = ""
    if front_axes is not None and len(run.objectives) > 2:
        links = [
            f'<a href="?front={a.metric},{b.metric}">{a.metric} × {b.metric}</a>'
            for a, b in itertools.combinations(run.objectives, 2)
        ]
        pairs = f"<p>Draw it on: {' · '.join(links)}</p>"
    finished = run.finished
    if finished.empty:
        return section("pareto", "Pareto front", how, note(run.empty))
    on_front = {t.trial_id for t in pareto_front(run.finished_trials, run.objectives)}
    front = ranked(finished[finished["trial_id"].isin(on_front)], first)
    trials = go.Scatter(
        x=finished[first.metric],
        y=finished[second.metric],
        mode="markers",
        name="trial",
        marker={"size": 9, "color": qualitative.Plotly[0]},
        hovertext=hover_texts(finished),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    best = go.Scatter(
        x=front[first.metric],
        y=front[second.metric],
        mode="lines+markers",
        name="Pareto front",
        marker={"size": 16, "symbol": "circle-open", "color": "crimson", "line": {"width": 2}},
        line={"color": "crimson", "width": 1},
        hovertext=hover_texts(front),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    fig = go.Figure([trials, best])
    fig.update_layout(
        height=560,
        xaxis_title=axis_title(first),
        yaxis_title=axis_title(second),
        legend=_LEGEND_ABOVE,
    )
    return section("pareto", "Pareto front", how, pairs + figure(fig))
