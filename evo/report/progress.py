"""How the search got where it is: what each rung trained and advanced, the objectives
generation by generation, and the best value against the compute spent."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from evo.describe import budget_text
from evo.report.frames import successful_trials
from evo.report.labels import axis_title, hover_texts
from evo.report.markup import figure, html_table, note, section
from evo.report.run import Run
from evo.report.ticks import round_ticks
from evo.space import Objective
from evo.summary import SUCCESS, anytime_curve, rung_rows


def rungs_section(run: Run) -> str:
    objective, space = run.objectives[0], run.space
    how = (
        "How many genomes each rung trained, and how many of them advanced to the next "
        f"(the best 1/{space.search.eta:g} of a rung's results advance, continuing from their "
        f"checkpoints); below, every {objective.metric} scored at each rung, stalled "
        "trials left out."
    )
    rows = rung_rows(run.trials, space)
    table = html_table(
        [
            (
                r.rung + 1,
                budget_text(r.budget),
                r.trials,
                r.done,
                r.failed,
                r.active,
                "—" if r.rung == len(rows) - 1 else r.advanced,
            )
            for r in rows
        ],
        ("rung", "budget", "trials", "done", "failed", "queued or running", "advanced"),
    )
    done = run.learned[run.learned["status"] == SUCCESS]
    if done.empty:
        return section("rungs", "Rungs", how, table + note(run.empty))
    fig = go.Figure()
    for row in rows:
        values = done.loc[done["rung"] == row.rung, objective.metric]
        fig.add_trace(
            go.Box(
                y=values,
                name=f"rung {row.rung + 1}: {budget_text(row.budget)}",
                boxpoints="all",
                jitter=0.4,
                hovertext=hover_texts(done[done["rung"] == row.rung]),
                hoverinfo="text",
            )
        )
    # Ticks from one at or below the lowest value (none is drawn below the lowest tick),
    # and a little room beyond the first and last.
    ticks = round_ticks(done[objective.metric]).axis(pad=0.25)
    yaxis = {"title": {"text": axis_title(objective)}, **ticks}
    fig.update_layout(height=420, yaxis=yaxis, showlegend=False)
    return section("rungs", "Rungs", how, table + figure(fig))


def generations_section(run: Run) -> str:
    finished = successful_trials(run.learned, run.objectives)
    how = (
        "For each generation, the best value found up to and including it, and the median "
        "of the trials created in it, for each objective (stalled trials left out); a "
        "falling gap means the population converges."
    )
    if finished.empty:
        return section("progress", "Objectives per generation", how, note(run.empty))
    fig = make_subplots(rows=len(run.objectives), cols=1, shared_xaxes=True)
    colors = {
        "best so far": qualitative.Plotly[0],
        "median of the generation": qualitative.Plotly[1],
    }
    for row, objective in enumerate(run.objectives, start=1):
        for name, series in _generation_lines(finished, objective).items():
            trace = go.Scatter(
                x=series.index,
                y=series.to_numpy(),
                name=name,
                mode="lines+markers",
                line={"color": colors[name], "dash": "dot" if name == "best so far" else "solid"},
                legendgroup=name,
                showlegend=row == 1,
            )
            fig.add_trace(trace, row=row, col=1)
        fig.update_yaxes(title_text=axis_title(objective), row=row, col=1)
    fig.update_xaxes(title_text="generation", dtick=1, row=len(run.objectives), col=1)
    fig.update_layout(height=120 + 260 * len(run.objectives))
    return section("progress", "Objectives per generation", how, figure(fig))


def _generation_lines(finished: pd.DataFrame, objective: Objective) -> dict[str, pd.Series]:
    """Per generation: the best value up to it (a line that never gets worse, unlike the
    best of each generation alone) and the generation's median."""
    values = finished.groupby("generation")[objective.metric]
    best = (values.agg(objective.best) * objective.sign).cummin() * objective.sign
    return {"best so far": best, "median of the generation": values.median()}


def anytime_section(run: Run) -> str:
    objective = run.objectives[0]
    how = (
        f"The best {objective.metric}{run.where} found so far against the training the "
        "search had spent until then (every trial's tokens, cool-downs, failed and stalled "
        "trials included): how much a better model costs."
    )
    curve = anytime_curve(run.trials, run.space, objective, run.info.unigram_bits_per_byte)
    points = [point for point in curve if point.best is not None]
    if not points:
        return section("anytime", "Best against compute", how, note(run.empty))
    tokens, best = [p.tokens for p in points], [p.best for p in points]
    fig = go.Figure(go.Scatter(x=tokens, y=best, mode="lines+markers", line_shape="hv"))
    fig.update_layout(
        height=420,
        xaxis={"title": {"text": "training tokens spent"}, "rangemode": "tozero"},
        yaxis_title=axis_title(objective),
    )
    return section("anytime", "Best against compute", how, figure(fig))
