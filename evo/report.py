"""The report of a search run: one self-contained HTML page, and exports of its trials.

The page embeds plotly's JavaScript, so it opens offline and can be archived or mailed
as a single file. It only reads the results database, so it can be made while the
search is still running. A search with rungs is judged at its top rung (the budget
nearest the target): the summary, the front and the learning curves are of top-rung
trials; the rungs section and the anytime curve show how the search got there.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import yaml
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from evo.metrics import METRICS, TrialStatus
from evo.space import Domain, Objective, SearchSpace, space_from_dict
from evo.storage import TRIAL_STATUSES, RunInfo, Storage
from evo.summary import anytime_curve, budget_text, rung_rows, spent_text, top_rung, utilization
from evo.validate import ValidationReport, validation_report
from llm.atomic import atomic_path, write_text
from llm.errors import ConfigError, UserError

SUCCESS = TrialStatus.DONE.value
FAILURES = tuple(status.value for status in TrialStatus if status.is_failure)
ACTIVE = tuple(status.value for status in TrialStatus if status.is_active)
LOST = (TrialStatus.RETRIED.value, TrialStatus.INTERRUPTED.value)
TOP_CURVES = 5
NO_SUCCESS = "No successful trials yet."
MISSING = "(missing)"  # the category of a gene a genome lacks

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
section { margin-bottom: 2.5em; }
p.how { color: #555; font-style: italic; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
"""


def run_space(info: RunInfo) -> SearchSpace:
    """The search space a run was started with, as stored in the database."""
    where = f"the search space stored with run {info.name!r}"
    try:
        data = yaml.safe_load(info.space_yaml)
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: not valid YAML ({_first_line(err)})") from None
    return space_from_dict(data, where)


def successful_trials(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The trials that finished with a finite value of every objective."""
    values = frame[[o.metric for o in objectives]].to_numpy(dtype=float)
    finished = (frame["status"] == SUCCESS).to_numpy() & np.isfinite(values).all(axis=1)
    return frame[finished]


def pareto_front(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The successful trials that no other successful trial dominates, best first by the
    first objective.

    A trial dominates another when it is at least as good in every objective and better
    in one. Equal trials do not dominate each other, so ties stay on the front together.
    """
    finished = successful_trials(frame, objectives)
    signs = np.array([o.sign for o in objectives])
    costs = finished[[o.metric for o in objectives]].to_numpy(dtype=float) * signs
    dominated = np.array(
        [np.any((costs <= cost).all(axis=1) & (costs < cost).any(axis=1)) for cost in costs],
        dtype=bool,
    )
    return _ranked(finished[~dominated], objectives[0])


def export_trials(
    storage: Storage, run: str, path: str | Path, fmt: Literal["csv", "parquet"]
) -> Path:
    """Write the run's trials, one row each with genes and metrics as columns."""
    if fmt not in ("csv", "parquet"):
        raise UserError(f"unknown export format {fmt!r}; expected csv or parquet")
    frame = storage.trials_frame(run)
    path = Path(path)
    with atomic_path(path) as tmp:
        if fmt == "csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def write_report(storage: Storage, run: str, out_path: str | Path) -> Path:
    """Write the run's report as one HTML page that needs no network to open."""
    info = storage.require_run(run)
    space = run_space(info)
    objectives = space.search.objectives
    frame = storage.trials_frame(run)
    finished = successful_trials(top_rung(frame, space), objectives)
    rungs = len(space.rung_budgets()) > 1
    sections = [
        _summary(info, space, storage, frame, finished),
        _rungs(frame, space, objectives[0]) if rungs else "",
        _progress(frame, space) if space.search.mode == "generational" else "",
        _anytime(frame, space, objectives[0]),
        _pareto(finished, objectives, rungs),
        _genes(successful_trials(frame[frame["rung"] == 0], objectives), space, objectives),
        _curves(storage, frame, finished, objectives[0]),
        _workers(frame),
        _failures(frame),
        _validation(validation_report(storage, run, space)),
        _promotions(storage, run, finished, objectives[0]),
    ]
    path = Path(out_path)
    generated = f"made {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    write_text(path, _page(f"evo run {info.name}", generated, sections))
    return path


# Sections


def _summary(
    info: RunInfo,
    space: SearchSpace,
    storage: Storage,
    frame: pd.DataFrame,
    finished: pd.DataFrame,
) -> str:
    objectives = space.search.objectives
    statuses = frame["status"]
    rows: list[tuple[str, str]] = [
        ("run", info.name),
        ("status", info.status),
        ("mode", space.search.mode.replace("_", "-")),
        ("created", _when(info.created_at)),
        ("updated", _when(info.updated_at)),
        ("seed", str(info.seed)),
    ]
    target = space.target_budget()
    if target is not None:
        rows.append(("target (what evo promote trains)", budget_text(target)))
    rows.append(("rungs", " / ".join(budget_text(b) for b in space.rung_budgets())))
    limits = space.search.budget.limits()
    if limits:
        rows.append(("spent", spent_text(storage.spent(info.name), limits)))
    if space.search.mode == "generational":
        saved = "none yet" if info.generation is None else str(info.generation + 1)
        rows.append(("generations complete", saved))
    lost = statuses.isin(LOST)
    rows.append(
        (
            "trials",
            f"{int((statuses == SUCCESS).sum())} done, {int(statuses.isin(FAILURES).sum())} "
            f"failed, {int(statuses.isin(ACTIVE).sum())} queued or running, {int(lost.sum())}"
            " lost to a dead worker or an interruption and run again",
        )
    )
    busy = utilization(frame, storage.run_sessions(info.name))
    if busy is not None:
        rows.append(("worker utilization", f"{100 * busy:.0f}% (busy worker-seconds / available)"))
    rows.append(("objectives", ", ".join(f"{o.metric} ({o.direction})" for o in objectives)))
    where = " at the top rung" if len(space.rung_budgets()) > 1 else ""
    for objective in objectives:
        best = "—"
        if not finished.empty:
            row = _ranked(finished, objective).iloc[0]
            genes = ", ".join(_gene_lines(row))
            best = f"{_fmt(row[objective.metric])} (trial {row['trial_id']}: {genes})"
        rows.append((f"best {objective.metric}{where}", best))
    return _section(
        "summary",
        "Summary",
        "The run as recorded in the results database; each best value comes with the "
        "trial and genome that reached it.",
        _table(rows),
    )


def _rungs(frame: pd.DataFrame, space: SearchSpace, objective: Objective) -> str:
    how = (
        "How many genomes each rung trained, and how many of them advanced to the next "
        f"(the best 1/{space.search.eta:g} of a rung's results advance, continuing from their "
        f"checkpoints); below, every {objective.metric} scored at each rung."
    )
    rows = rung_rows(frame, space)
    table = _table(
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
    done = frame[frame["status"] == SUCCESS]
    if done.empty:
        return _section("rungs", "Rungs", how, table + _note(NO_SUCCESS))
    fig = go.Figure()
    for row in rows:
        values = done.loc[done["rung"] == row.rung, objective.metric]
        fig.add_trace(
            go.Box(
                y=values,
                name=f"rung {row.rung + 1}: {budget_text(row.budget)}",
                boxpoints="all",
                jitter=0.4,
                hovertext=_hover_texts(done[done["rung"] == row.rung]),
                hoverinfo="text",
            )
        )
    fig.update_layout(height=420, yaxis_title=_axis_title(objective), showlegend=False)
    return _section("rungs", "Rungs", how, table + _figure(fig))


def _progress(frame: pd.DataFrame, space: SearchSpace) -> str:
    objectives = space.search.objectives
    finished = successful_trials(frame, objectives)
    how = (
        "For each generation, the best value so far and the median of the trials created "
        "in that generation, for each objective; a falling gap means the population converges."
    )
    if finished.empty:
        return _section("progress", "Objectives per generation", how, _note(NO_SUCCESS))
    fig = make_subplots(rows=len(objectives), cols=1, shared_xaxes=True)
    colors = {"best so far": qualitative.Plotly[0], "median": qualitative.Plotly[1]}
    for row, objective in enumerate(objectives, start=1):
        values = finished.groupby("generation")[objective.metric]
        best = (values.agg(objective.best) * objective.sign).cummin() * objective.sign
        for name, series in (("best so far", best), ("median", values.median())):
            trace = go.Scatter(
                x=series.index,
                y=series.to_numpy(),
                name=name,
                mode="lines+markers",
                line={"color": colors[name], "dash": "solid" if name == "median" else "dot"},
                legendgroup=name,
                showlegend=row == 1,
            )
            fig.add_trace(trace, row=row, col=1)
        fig.update_yaxes(title_text=_axis_title(objective), row=row, col=1)
    fig.update_xaxes(title_text="generation", dtick=1, row=len(objectives), col=1)
    fig.update_layout(height=120 + 260 * len(objectives))
    return _section("progress", "Objectives per generation", how, _figure(fig))


def _anytime(frame: pd.DataFrame, space: SearchSpace, objective: Objective) -> str:
    top = " at the top rung" if len(space.rung_budgets()) > 1 else ""
    how = (
        f"The best {objective.metric}{top} found so far against the training the search "
        "had spent until then (every trial's tokens, cool-downs and failed trials "
        "included): how much a better model costs."
    )
    curve = anytime_curve(frame, space, objective)
    curve = curve[curve["best"].notna()]
    if curve.empty:
        return _section("anytime", "Best against compute", how, _note(NO_SUCCESS))
    fig = go.Figure(
        go.Scatter(x=curve["tokens"], y=curve["best"], mode="lines+markers", line_shape="hv")
    )
    fig.update_layout(
        height=420, xaxis_title="training tokens spent", yaxis_title=_axis_title(objective)
    )
    return _section("anytime", "Best against compute", how, _figure(fig))


def _pareto(finished: pd.DataFrame, objectives: Sequence[Objective], rungs: bool) -> str:
    where = " at the top rung" if rungs else ""
    first = objectives[0]
    if len(objectives) == 1:
        how = (
            f"Each successful trial's {first.metric}{where}, in the order trials were made, "
            "and the best so far; the best trial is circled. Hover for genome and metrics."
        )
        if finished.empty:
            return _section("history", "History", how, _note(NO_SUCCESS))
        ordered = finished.sort_values("trial_id")
        best = (ordered[first.metric] * first.sign).cummin() * first.sign
        trials = go.Scatter(
            x=ordered["trial_id"],
            y=ordered[first.metric],
            mode="markers",
            name="trial",
            hovertext=_hover_texts(ordered),
            hovertemplate="%{hovertext}<extra></extra>",
        )
        line = go.Scatter(
            x=ordered["trial_id"], y=best, mode="lines", line_shape="hv", name="best so far"
        )
        top = _ranked(finished, first).head(1)
        circle = go.Scatter(
            x=top["trial_id"],
            y=top[first.metric],
            mode="markers",
            name="best",
            marker={"size": 16, "symbol": "circle-open", "color": "crimson", "line": {"width": 2}},
        )
        fig = go.Figure([trials, line, circle])
        fig.update_layout(height=480, xaxis_title="trial", yaxis_title=_axis_title(first))
        return _section("history", "History", how, _figure(fig))
    how = (
        f"Every successful trial{where} on the first two objectives; the circled, connected "
        "trials are the Pareto front over all objectives: none is beaten in every objective "
        "by another. Hover for genome and metrics."
    )
    if finished.empty:
        return _section("pareto", "Pareto front", how, _note(NO_SUCCESS))
    front = pareto_front(finished, objectives)
    second = objectives[1]
    trials = go.Scatter(
        x=finished[first.metric],
        y=finished[second.metric],
        mode="markers",
        name="trial",
        marker={"size": 9, "color": qualitative.Plotly[0]},
        hovertext=_hover_texts(finished),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    best = go.Scatter(
        x=front[first.metric],
        y=front[second.metric],
        mode="lines+markers",
        name="Pareto front",
        marker={"size": 16, "symbol": "circle-open", "color": "crimson", "line": {"width": 2}},
        line={"color": "crimson", "width": 1},
        hovertext=_hover_texts(front),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    fig = go.Figure([trials, best])
    fig.update_layout(height=560, xaxis_title=_axis_title(first), yaxis_title=_axis_title(second))
    return _section("pareto", "Pareto front", how, _figure(fig))


def _genes(finished: pd.DataFrame, space: SearchSpace, objectives: Sequence[Objective]) -> str:
    first = objectives[0]
    lowest = " at the lowest rung (every genome has one, all at the same budget)"
    how = (
        f"One line per successful trial{lowest if len(space.rung_budgets()) > 1 else ''} "
        f"across its gene values (then its objectives), coloured by {first.metric}, the "
        "best in dark red; drag along an axis to select."
    )
    if finished.empty:
        return _section("genes", "Genes", how, _note(NO_SUCCESS))
    names = [n for n in space.gene_names if f"gene.{n}" in finished]
    names += [c[5:] for c in finished if c.startswith("gene.") and c[5:] not in names]
    dimensions = [_dimension(n, finished[f"gene.{n}"], space.genes.get(n)) for n in names]
    dimensions += [
        {"label": o.metric, "values": finished[o.metric].to_numpy(dtype=float)} for o in objectives
    ]
    line = {
        "color": finished[first.metric].to_numpy(dtype=float),
        # The best end of the scale is dark red, the rest from dark to pale blue.
        "colorscale": [[0.0, "#8b0000"], [0.02, "#08306b"], [0.5, "#6baed6"], [1.0, "#deebf7"]],
        "reversescale": first.sign < 0,
        "showscale": True,
        "colorbar": {"title": {"text": first.metric}},
    }
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    fig.update_layout(height=520, margin={"l": 90, "r": 90, "t": 90})
    return _section("genes", "Genes", how, _figure(fig))


def _dimension(name: str, column: pd.Series, domain: Domain | None) -> dict[str, Any]:
    """One parallel-coordinates axis. Ranges are numbers as they are (log ranges on a log
    axis, labelled with the values themselves); choices, and genes some genomes lack, are
    integer codes labelled with their values in the space's order."""
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and column.notna().all() and (domain is None or domain.choice is None):
        values = column.to_numpy(dtype=float)
        if domain is not None and domain.kind == "float" and domain.log:
            low, high = np.log10(domain.bounds)
            ticks = np.linspace(low, high, 5)
            return {
                "label": name,
                "values": np.log10(values),
                "range": [low, high],
                "tickvals": ticks.tolist(),
                "ticktext": [f"{10**t:.2g}" for t in ticks],
            }
        return {"label": name, "values": values}
    labels = [MISSING if _missing(v) else _fmt(v) for v in column]
    known = [_fmt(v) for v in domain.values()] if domain is not None and domain.choice else []
    categories = known + sorted(set(labels) - set(known))
    return {
        "label": name,
        "values": pd.Categorical(labels, categories=categories).codes,
        "tickvals": list(range(len(categories))),
        "ticktext": categories,
    }


def _curves(
    storage: Storage, frame: pd.DataFrame, finished: pd.DataFrame, objective: Objective
) -> str:
    adapt = "; dashed while adapting" if "pretrain.bits_per_byte" in frame else ""
    how = (
        f"Training loss against tokens trained for the {TOP_CURVES} best genomes by "
        f"{objective.metric}: solid while pretraining{adapt}; dots are validation losses. "
        "A genome that advanced has one segment per rung, each continuing the last from "
        "where its cool-down began."
    )
    fig = go.Figure()
    top = _ranked(finished, objective).head(TOP_CURVES)
    ranked = top[["genome_id", objective.metric]].itertuples(index=False, name=None)
    for i, (genome_id, value) in enumerate(ranked):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        name = f"genome {genome_id} ({objective.metric} {_fmt(value)})"
        trials = frame[(frame["genome_id"] == genome_id) & (frame["status"] == SUCCESS)]
        for trial_id in trials.sort_values("rung")["trial_id"]:
            _add_curve(fig, pd.DataFrame(storage.curve(int(trial_id))), name, color)
    if not fig.data:
        message = NO_SUCCESS if finished.empty else "No learning curves were recorded."
        return _section("curves", "Learning curves", how, _note(message))
    fig.update_layout(height=520, xaxis_title="tokens trained", yaxis_title="loss (nats per token)")
    return _section("curves", "Learning curves", how, _figure(fig))


def _add_curve(fig: go.Figure, points: pd.DataFrame, name: str, color: str) -> None:
    if points.empty:
        return
    tokens = _tokens_trained(points)
    first = not any(trace.legendgroup == name for trace in fig.data)
    for stage, dash in (("pretrain", "solid"), ("adapt", "dash")):
        part = points["stage"] == stage
        if not part.any():
            continue
        fig.add_trace(
            go.Scatter(
                x=tokens[part],
                y=points.loc[part, "train_loss"].astype(float),
                mode="lines",
                name=name if stage == "pretrain" else f"{name}, adapt",
                legendgroup=name,
                showlegend=first and stage == "pretrain",
                line={"color": color, "dash": dash},
            )
        )
        evaluated = part & points["val_loss"].notna()
        if evaluated.any():
            fig.add_trace(
                go.Scatter(
                    x=tokens[evaluated],
                    y=points.loc[evaluated, "val_loss"].astype(float),
                    mode="markers",
                    name=f"{name}, {stage} validation",
                    legendgroup=name,
                    marker={"color": color, "size": 9},
                    showlegend=False,
                )
            )


def _tokens_trained(points: pd.DataFrame) -> pd.Series:
    """Tokens trained so far over both stages: the adapt stage's count starts at zero, so it
    is moved to where pretraining ended."""
    pretrained = points.loc[points["stage"] == "pretrain", "tokens"].max()
    offset = 0 if pd.isna(pretrained) else int(pretrained)
    return points["tokens"] + np.where(points["stage"] == "adapt", offset, 0)


def _workers(frame: pd.DataFrame) -> str:
    how = (
        "What each worker did over time: one bar per trial, from its start to its end on "
        "the worker that ran it, coloured by rung; gaps are idle workers."
    )
    ran = frame[frame["started_at"].notna() & frame["finished_at"].notna()].copy()
    if ran.empty:
        return _section("workers", "Workers", how, _note("No trial has run yet."))
    ran["where"] = ran["host"].fillna("") + " " + ran["worker"].fillna("driver")
    ran["rung"] = (ran["rung"] + 1).map(lambda r: f"rung {r}")
    ran["label"] = ran["trial_id"].map(lambda t: f"trial {t}") + " " + ran["status"]
    fig = px.timeline(
        ran,
        x_start="started_at",
        x_end="finished_at",
        y="where",
        color="rung",
        hover_name="label",
        category_orders={"rung": sorted(ran["rung"].unique())},
    )
    fig.update_layout(height=160 + 40 * ran["where"].nunique(), yaxis_title="worker")
    return _section("workers", "Workers", how, _figure(fig))


def _failures(frame: pd.DataFrame) -> str:
    counts = frame["status"].value_counts()
    count_rows = [(s, int(counts[s])) for s in TRIAL_STATUSES if s in counts]
    failed = frame.loc[
        frame["status"].isin(FAILURES), ["trial_id", "generation", "status", "error"]
    ]
    failed_rows = [
        (trial, generation, status, _first_line(error))
        for trial, generation, status, error in failed.itertuples(index=False, name=None)
    ]
    body = _table(count_rows, ("status", "trials")) if count_rows else _note("No trials yet.")
    if failed_rows:
        body += _table(failed_rows, ("trial", "generation", "status", "error"))
    else:
        body += _note("No trial has failed.")
    how = (
        "How many trials ended in each status, then every trial that failed, timed out, "
        "was invalid or diverged, with the first line of its error."
    )
    return _section("failures", "Failures", how, body)


def _validation(report: ValidationReport | None) -> str:
    if report is None or not report.genomes:
        return ""
    genomes = report.genomes
    fig = go.Figure(
        go.Scatter(
            x=[g.candidate.rank for g in genomes],
            y=[g.mean for g in genomes],
            error_y={"type": "data", "array": [g.spread or 0.0 for g in genomes]},
            mode="markers",
            text=[f"genome {g.candidate.genome_id}" for g in genomes],
            hovertemplate="%{text}<br>search rank %{x}<br>validated %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        height=360,
        xaxis_title="rank in the search (1 = its best)",
        yaxis_title=f"validated {report.metric} ({METRICS[report.metric].unit})",
        xaxis={"dtick": 1},
    )
    agreement = (
        "fewer than three genomes are validated, too few to compare rankings"
        if report.spearman is None or report.kendall is None
        else f"Spearman ρ {report.spearman:.2f}, Kendall τ {report.kendall:.2f}"
    )
    noise = (
        f" Seed-to-seed spread {report.noise:.4g} against a median gap of {report.gap:.4g} "
        "between neighbouring genomes: where the gap is smaller, their order is noise."
        if report.noise is not None and report.gap is not None
        else ""
    )
    how = (
        f"The search's best genomes retrained at {budget_text(report.budget)} with other "
        f"seeds (`evo validate`): their mean {report.metric} (bars: one standard deviation "
        f"over seeds) against their rank in the search. {agreement}.{noise}"
    )
    rows = [
        (
            g.candidate.genome_id,
            g.candidate.rank,
            _fmt(g.candidate.value),
            g.candidate.rung + 1,
            _fmt(g.mean),
            "—" if g.spread is None else _fmt(g.spread),
            len(g.values),
            g.rank,
        )
        for g in genomes
    ]
    header = ("genome", "search rank", "search", "rung", "validated", "std", "seeds", "rank")
    return _section("validation", "Validation", how, _figure(fig) + _table(rows, header))


def _promotions(storage: Storage, run: str, finished: pd.DataFrame, objective: Objective) -> str:
    promotions = storage.promotions(run)
    if not promotions:
        return ""
    genomes = storage.genomes(run)
    searched = finished.set_index("genome_id")[objective.metric].to_dict()
    rows = [
        (
            ", ".join(_gene_text(k, v) for k, v in genomes.get(p.genome_id, {}).items()),
            _fmt(searched.get(p.genome_id)),
            _fmt((p.metrics or {}).get(objective.metric)),
            p.out_dir,
            p.status,
            ", ".join(f"{k}: {_fmt(v)}" for k, v in (p.metrics or {}).items()),
        )
        for p in promotions
    ]
    how = (
        f"Genomes trained further after the search: their {objective.metric} in the search "
        "(at the top rung) beside the promoted model's, where the model went, and its "
        "metrics (tokens and steps trained; eval_tokens scored)."
    )
    header = (
        "genome",
        f"search {objective.metric}",
        f"promoted {objective.metric}",
        "out dir",
        "status",
        "metrics",
    )
    return _section("promotions", "Promotions", how, _table(rows, header))


# Pieces


def _ranked(frame: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """The rows best first by the objective; ties keep their order."""
    ascending = objective.sign > 0
    return frame.sort_values(objective.metric, ascending=ascending, kind="stable")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _fmt(value: Any) -> str:
    """A number short enough to read: four significant digits, or from 1000 up the whole
    number with thousands separators (a parameter count reads better than 1.235e+06)."""
    if _missing(value):
        return "—"
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{float(value):.4g}"
    return str(value)


def _first_line(error: Any) -> str:
    lines = "" if _missing(error) else str(error).strip().splitlines()
    return lines[0] if lines else ""


def _gene_text(name: str, value: Any) -> str:
    return f"{name}={_fmt(value)}"


def _gene_lines(row: pd.Series) -> list[str]:
    """`name=value` for each gene the trial's genome has."""
    return [
        _gene_text(key[5:], value)
        for key, value in row.items()
        if str(key).startswith("gene.") and not _missing(value)
    ]


def _hover_texts(frame: pd.DataFrame) -> list[str]:
    texts = []
    for _, row in frame.iterrows():
        when = f"rung {row['rung'] + 1}"
        if not _missing(row["generation"]):
            when = f"generation {row['generation']:.0f}"
        lines = [f"trial {row['trial_id']} ({when})"]
        lines += _gene_lines(row)
        lines += [f"{m}: {_fmt(row[m])}" for m in METRICS if not _missing(row[m])]
        texts.append("<br>".join(html.escape(line) for line in lines))
    return texts


def _axis_title(objective: Objective) -> str:
    better = "lower" if objective.sign > 0 else "higher"
    return f"{objective.metric} ({better} is better)"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def _note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = ""
    if header is not None:
        head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _figure(fig: go.Figure) -> str:
    fig.update_layout(template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _section(anchor: str, title: str, how_to_read: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
        f'<p class="how">{html.escape(how_to_read)}</p>{body}</section>\n'
    )


def _page(title: str, subtitle: str, sections: Sequence[str]) -> str:
    # plotly.js inline in the head, once, so that the page opens offline.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f'<h1>{html.escape(title)}</h1>\n<p class="how">{html.escape(subtitle)}</p>\n'
        f"{''.join(sections)}</body></html>\n"
    )
