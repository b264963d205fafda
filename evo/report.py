"""The report of a search run: one self-contained HTML page, and exports of its trials.

The page embeds plotly's JavaScript, so it opens offline and can be archived or mailed
as a single file. It only reads the results database, so it can be made while the
search is still running.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import yaml
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from evo.metrics import METRICS, TrialStatus
from evo.space import Domain, Objective, SearchSpace, space_from_dict
from evo.storage import TRIAL_STATUSES, RunInfo, Storage
from llm.atomic import atomic_path, write_text
from llm.errors import ConfigError, UserError

SUCCESS = TrialStatus.DONE.value
FAILURES = tuple(status.value for status in TrialStatus if status.is_failure)
ACTIVE = tuple(status.value for status in TrialStatus if status.is_active)
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
    finished = successful_trials(frame, objectives)
    sections = [
        _summary(info, frame, finished, objectives),
        _progress(finished, objectives),
        _pareto(finished, objectives),
        _genes(finished, space, objectives),
        _curves(storage, finished, objectives[0]),
        _failures(frame),
        _promotions(storage, run),
    ]
    path = Path(out_path)
    write_text(path, _page(f"evo run {info.name}", sections))
    return path


# Sections


def _summary(
    info: RunInfo, frame: pd.DataFrame, finished: pd.DataFrame, objectives: Sequence[Objective]
) -> str:
    statuses = frame["status"]
    rows: list[tuple[str, str]] = [
        ("run", info.name),
        ("status", info.status),
        ("created", _when(info.created_at)),
        ("updated", _when(info.updated_at)),
        ("seed", str(info.seed)),
        ("last generation saved", "none yet" if info.generation is None else str(info.generation)),
        (
            "trials",
            f"{int((statuses == SUCCESS).sum())} done, {int(statuses.isin(FAILURES).sum())} "
            f"failed, {int(statuses.isin(ACTIVE).sum())} queued or running",
        ),
        ("objectives", ", ".join(f"{o.metric} ({o.direction})" for o in objectives)),
    ]
    for objective in objectives:
        best = "—"
        if not finished.empty:
            row = _ranked(finished, objective).iloc[0]
            genes = ", ".join(_gene_lines(row))
            best = f"{_fmt(row[objective.metric])} (trial {row['trial_id']}: {genes})"
        rows.append((f"best {objective.metric}", best))
    return _section(
        "summary",
        "Summary",
        "The run as recorded in the results database; each best value comes with the "
        "trial and genome that reached it.",
        _table(rows),
    )


def _progress(finished: pd.DataFrame, objectives: Sequence[Objective]) -> str:
    how = (
        "For each generation, the best and the median value of each objective among the "
        "trials created in that generation; a falling gap means the population converges."
    )
    if finished.empty:
        return _section("progress", "Objectives per generation", how, _note(NO_SUCCESS))
    fig = make_subplots(
        rows=len(objectives),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[_axis_title(o) for o in objectives],
    )
    colors = {"best": qualitative.Plotly[0], "median": qualitative.Plotly[1]}
    for row, objective in enumerate(objectives, start=1):
        values = finished.groupby("generation")[objective.metric]
        best = values.agg(objective.best)
        for name, series in (("best", best), ("median", values.median())):
            trace = go.Scatter(
                x=series.index,
                y=series.to_numpy(),
                name=name,
                mode="lines+markers",
                line={"color": colors[name], "dash": "solid" if name == "best" else "dot"},
                legendgroup=name,
                showlegend=row == 1,
            )
            fig.add_trace(trace, row=row, col=1)
    fig.update_xaxes(title_text="generation", dtick=1, row=len(objectives), col=1)
    fig.update_layout(height=120 + 260 * len(objectives))
    return _section("progress", "Objectives per generation", how, _figure(fig))


def _pareto(finished: pd.DataFrame, objectives: Sequence[Objective]) -> str:
    if len(objectives) == 1:
        how = (
            f"Each successful trial's {objectives[0].metric} in the order trials were made, "
            "coloured by generation; the best trial is circled. Hover for genome and metrics."
        )
    else:
        how = (
            "Every successful trial on the first two objectives, coloured by generation; the "
            "circled, connected trials are the Pareto front over all objectives: none is "
            "beaten in every objective by another. Hover for genome and metrics."
        )
    if finished.empty:
        return _section("pareto", "Pareto front", how, _note(NO_SUCCESS))
    front = pareto_front(finished, objectives)
    first = objectives[0]
    single = len(objectives) == 1
    x_column, x_title = ("trial_id", "trial") if single else (first.metric, _axis_title(first))
    y = first if single else objectives[1]
    trials = go.Scatter(
        x=finished[x_column],
        y=finished[y.metric],
        mode="markers",
        name="trial",
        marker={
            "color": finished["generation"],
            "colorscale": "Viridis",
            "size": 9,
            "showscale": True,
            "colorbar": {"title": {"text": "generation"}},
        },
        hovertext=_hover_texts(finished),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    best = go.Scatter(
        x=front[x_column],
        y=front[y.metric],
        mode="markers" if single else "lines+markers",
        name="best" if single else "Pareto front",
        marker={"size": 16, "symbol": "circle-open", "color": "crimson", "line": {"width": 2}},
        line={"color": "crimson", "width": 1},
        hovertext=_hover_texts(front),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    fig = go.Figure([trials, best])
    fig.update_layout(height=560, xaxis_title=x_title, yaxis_title=_axis_title(y))
    return _section("pareto", "Pareto front", how, _figure(fig))


def _genes(finished: pd.DataFrame, space: SearchSpace, objectives: Sequence[Objective]) -> str:
    first = objectives[0]
    how = (
        f"One line per successful trial across its gene values (then its objectives), "
        f"coloured by {first.metric} with the best in yellow; drag along an axis to select."
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
        "colorscale": "Viridis",
        "reversescale": first.sign > 0,
        "showscale": True,
        "colorbar": {"title": {"text": first.metric}},
    }
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line))
    fig.update_layout(height=520, margin={"l": 80, "r": 80, "t": 80})
    return _section("genes", "Genes", how, _figure(fig))


def _dimension(name: str, column: pd.Series, domain: Domain | None) -> dict[str, Any]:
    """One parallel-coordinates axis. Ranges are numbers as they are (log ranges as log10);
    choices, and genes some genomes lack, are integer codes labelled with their values in
    the space's order."""
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    if numeric and column.notna().all() and (domain is None or domain.choice is None):
        values = column.to_numpy(dtype=float)
        if domain is not None and domain.kind == "float" and domain.log:
            return {"label": f"log10 {name}", "values": np.log10(values)}
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


def _curves(storage: Storage, finished: pd.DataFrame, objective: Objective) -> str:
    how = (
        f"Training loss against tokens trained for the {TOP_CURVES} best trials by "
        f"{objective.metric}: solid while pretraining, dashed while adapting; dots are "
        "validation losses."
    )
    fig = go.Figure()
    top = _ranked(finished, objective).head(TOP_CURVES)
    ranked = top[["trial_id", objective.metric]].itertuples(index=False, name=None)
    for i, (trial_id, value) in enumerate(ranked):
        points = pd.DataFrame(storage.curve(int(trial_id)))
        if points.empty:
            continue
        name = f"trial {trial_id} ({objective.metric} {_fmt(value)})"
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        tokens = _tokens_trained(points)
        for stage, dash in (("pretrain", "solid"), ("adapt", "dash")):
            part = points["stage"] == stage
            if not part.any():
                continue
            train_loss = points.loc[part, "train_loss"].astype(float)
            fig.add_trace(
                go.Scatter(
                    x=tokens[part],
                    y=train_loss,
                    mode="lines",
                    name=f"{name}, {stage}",
                    legendgroup=name,
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
    if not fig.data:
        message = NO_SUCCESS if finished.empty else "No learning curves were recorded."
        return _section("curves", "Learning curves", how, _note(message))
    fig.update_layout(height=520, xaxis_title="tokens trained", yaxis_title="loss")
    return _section("curves", "Learning curves", how, _figure(fig))


def _tokens_trained(points: pd.DataFrame) -> pd.Series:
    """Tokens trained so far over both stages: the adapt stage's count starts at zero, so it
    is moved to where pretraining ended."""
    pretrained = points.loc[points["stage"] == "pretrain", "tokens"].max()
    offset = 0 if pd.isna(pretrained) else int(pretrained)
    return points["tokens"] + np.where(points["stage"] == "adapt", offset, 0)


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


def _promotions(storage: Storage, run: str) -> str:
    promotions = storage.promotions(run)
    if not promotions:
        return ""
    genomes = storage.genomes(run)
    rows = [
        (
            ", ".join(_gene_text(k, v) for k, v in genomes.get(p.genome_id, {}).items()),
            p.out_dir,
            p.status,
            ", ".join(f"{k}: {_fmt(v)}" for k, v in (p.metrics or {}).items()),
        )
        for p in promotions
    ]
    how = "Genomes trained further after the search, where their models went, and their metrics."
    return _section(
        "promotions", "Promotions", how, _table(rows, ("genome", "out dir", "status", "metrics"))
    )


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
        lines = [f"trial {row['trial_id']} (generation {row['generation']})"]
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


def _page(title: str, sections: Sequence[str]) -> str:
    # plotly.js inline in the head, once, so that the page opens offline.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n{''.join(sections)}</body></html>\n"
    )
