"""The report of a search run: one HTML page, and exports of its trials.

By default the page embeds plotly's JavaScript, so it opens offline and can be archived
or mailed as a single file; `plotly="file"` writes the script once beside the page
instead (most of an inline page's size is that script). It only reads the results
database, so it can be made while the search is still running. A search with rungs is
judged at its top rung (the budget nearest the target): the summary, the front and the
learning curves are of top-rung trials; the rungs section and the anytime curve show how
the search got there. Stalled trials (see evo.summary.stalled) are listed, in the
trials and failures sections, but left out of the charts.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import yaml
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs, get_plotlyjs_version
from plotly.subplots import make_subplots

from evo.importance import MIN_TRIALS, gene_importance
from evo.metrics import EVAL_TOKENS, METRICS, TrialStatus
from evo.space import Domain, Objective, SearchSpace, space_from_dict
from evo.storage import TRIAL_STATUSES, PromotionRecord, RunInfo, Storage
from evo.summary import (
    STALLED,
    STALLED_RULE,
    SearchScore,
    anytime_curve,
    budget_text,
    generations_complete,
    rung_rows,
    search_scores,
    spent_text,
    stalled,
    top_rung,
    worker_time,
)
from evo.validate import ValidationReport, validation_report
from llm.atomic import atomic_path, write_text
from llm.errors import ConfigError, UserError

SUCCESS = TrialStatus.DONE.value
FAILURES = tuple(status.value for status in TrialStatus if status.is_failure)
ACTIVE = tuple(status.value for status in TrialStatus if status.is_active)
LOST = (TrialStatus.RETRIED.value, TrialStatus.INTERRUPTED.value)
TOP_CURVES = 5
SLICE_GENES = 4  # slice plots for this many of the most important genes
NO_SUCCESS = "No successful trials yet."
MISSING = "(missing)"  # the category of a gene a genome lacks
NOT_MEASURED = "n/a (CPU)"  # a GPU-only metric of a trial that trained elsewhere
PlotlyMode = Literal["inline", "file"]
PLOTLY_MODES: tuple[PlotlyMode, ...] = ("inline", "file")
# Parallel coordinates: the best line alone is dark red; the rest dark (better) to pale blue.
BEST_RED, DARK_BLUE, PALE_BLUE = "#b2182b", "#08306b", "#c6dbef"

PAGE_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
  padding: 0 1em; }
section { margin-bottom: 2.5em; }
p.how { color: #555; font-style: italic; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; }
table.sortable th { cursor: pointer; }
input.filter { margin-bottom: 0.5em; width: 20em; }
"""
# Sorting and filtering of the trials table, in plain JavaScript: a click on a heading sorts
# by that column (numbers as numbers), again to reverse; the box keeps the rows containing
# its text. Both are kept in the address (#sort=HEADING&filter=TEXT, -HEADING descending),
# so a link shares the view and the dashboard's redraw (a reload) keeps it.
_TABLE_SCRIPT = """<script>
document.addEventListener("DOMContentLoaded", () => {
  const view = new URLSearchParams(location.hash.slice(1));
  const remember = () => history.replaceState(null, "", "#" + view.toString());
  for (const table of document.querySelectorAll("table.sortable")) {
    const body = table.tBodies[0];
    const filter = document.createElement("input");
    filter.className = "filter";
    filter.placeholder = "filter rows";
    const keep = () => {
      const text = filter.value.toLowerCase();
      for (const row of body.rows) {
        row.hidden = !row.textContent.toLowerCase().includes(text);
      }
    };
    filter.addEventListener("input", () => {
      filter.value ? view.set("filter", filter.value) : view.delete("filter");
      remember();
      keep();
    });
    table.parentNode.insertBefore(filter, table);
    table.querySelectorAll("th").forEach((th, column) => {
      th.addEventListener("click", () => {
        const up = th.dataset.order !== "up";
        th.dataset.order = up ? "up" : "down";
        const key = (row) => {
          const text = row.cells[column].textContent.replace(/,/g, "");
          const number = parseFloat(text);
          return isNaN(number) ? text : number;
        };
        const rows = Array.from(body.rows).sort((a, b) => {
          const x = key(a), y = key(b);
          const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0)
            : (typeof x === "number" ? -1 : 1);
          return up ? order : -order;
        });
        body.append(...rows);
        view.set("sort", (up ? "" : "-") + th.textContent);
        remember();
      });
    });
    const wanted = (view.get("sort") || "").match(/^(-?)(.+)$/);
    const heading = wanted && Array.from(table.querySelectorAll("th"))
      .find((th) => th.textContent === wanted[2]);
    if (heading) {
      heading.click();
      if (wanted[1]) heading.click();
    }
    filter.value = view.get("filter") || "";
    keep();
  }
});
</script>"""


@dataclass(frozen=True)
class _Run:
    """What the sections read: the run, its space and every trial, with which stalled."""

    info: RunInfo
    space: SearchSpace
    frame: pd.DataFrame  # Storage.trials_frame
    stalled: pd.Series  # aligned with frame

    @property
    def objectives(self) -> list[Objective]:
        return self.space.search.objectives

    @property
    def rungs(self) -> bool:
        return len(self.space.rung_budgets()) > 1

    @property
    def learned(self) -> pd.DataFrame:
        """Every trial but the stalled ones: what the charts draw."""
        return self.frame[~self.stalled]

    @property
    def finished(self) -> pd.DataFrame:
        """The successful, not stalled trials at the top rung: the scores that matter."""
        return successful_trials(top_rung(self.learned, self.space), self.objectives)

    @property
    def empty(self) -> str:
        """What a chart of the top rung says when it has no trial to draw: why, when every
        success stalled; that trials learned below the top, when they did."""
        count = int(self.stalled.sum())
        learned_somewhere = (self.learned["status"] == SUCCESS).any()
        if self.rungs and learned_somewhere:
            return "No successful trial at the top rung yet."
        if not count or learned_somewhere:
            return NO_SUCCESS
        return f"No trial has learned yet: {count} succeeded but stalled (see Failures)."

    def empty_at(self, rung: int) -> str:
        """`empty`, for a chart of one rung's trials: trials that learned at other rungs
        do not make "no successful trials" true there."""
        at = self.frame["rung"] == rung
        count = int(self.stalled[at].sum())
        learned = self.frame[at & ~self.stalled]
        if not count or (learned["status"] == SUCCESS).any():
            return NO_SUCCESS
        return (
            f"No trial has learned at rung {rung + 1} yet: {count} succeeded there but "
            "stalled (see Failures)."
        )

    @property
    def where(self) -> str:
        return " at the top rung" if self.rungs else ""


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


def write_report(
    storage: Storage, run: str, out_path: str | Path, plotly: PlotlyMode = "inline"
) -> Path:
    """Write the run's report as one HTML page that needs no network to open: with
    plotly.js inside it ("inline"), or beside it in a file the page names ("file")."""
    if plotly not in PLOTLY_MODES:
        raise UserError(f"unknown plotly mode {plotly!r}; expected inline or file")
    path = Path(out_path)
    info = storage.require_run(run)
    page = render_report(storage, info, _plotly_script(path, plotly))
    write_text(path, page)
    return path


def render_report(
    storage: Storage,
    info: RunInfo,
    script: str,
    head: str = "",
    front: tuple[str, str] | None = None,
) -> str:
    """The report page of run `info`, with `script` (the tag that loads plotly.js) and any
    `head` markup (the dashboard's live updates) in its head. `front` names the two
    objectives the Pareto front is drawn on (default: the first two); given, the page
    also links every other pair (`?front=A,B`), as the dashboard serves it."""
    run = info.name
    frame = storage.trials_frame(run)
    data = _Run(info, run_space(info), frame, stalled(frame, info.unigram_bits_per_byte))
    validated = validation_report(storage, run, data.space)
    sections = [
        _summary(data, storage),
        _rungs(data) if data.rungs else "",
        _progress(data) if data.space.search.mode == "generational" else "",
        _anytime(data),
        _history(data) if len(data.objectives) == 1 else _pareto(data, front),
        _genes(data),
        _importance(data),
        _curves(data, storage),
        _trials(data),
        _workers(data.frame),
        _failures(data),
        _validation(validated),
        _promotions(data, storage.promotions(run), storage.genomes(run), validated),
    ]
    generated = f"generated at {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"
    return _page(f"evo run {info.name}", generated, script + head, sections)


def _plotly_script(page: Path, mode: PlotlyMode) -> str:
    """The page's plotly.js: inline, or a file beside the page written once per plotly.js
    version (so that a page made by another version keeps the script it was made with)."""
    if mode == "inline":
        return f'<script type="text/javascript">{get_plotlyjs()}</script>'
    name = f"plotly-{get_plotlyjs_version()}.min.js"
    script = page.parent / name
    if not script.exists():
        write_text(script, get_plotlyjs())
    return f'<script type="text/javascript" src="{html.escape(name)}" charset="utf-8"></script>'


# Sections


def _summary(run: _Run, storage: Storage) -> str:
    info, space = run.info, run.space
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
        rows.append(
            ("generations complete", f"{generations_complete(info)} of {space.search.generations}")
        )
    rows.append(("trials", _trial_counts(run)))
    rows.append(("unigram baseline", _baseline_text(info.unigram_bits_per_byte)))
    workers = worker_time(run.frame, storage.run_sessions(info.name))
    if workers.utilization is not None:
        rows.append(("worker utilization", workers.describe()))
    rows.append(("objectives", ", ".join(f"{o.metric} ({o.direction})" for o in run.objectives)))
    for objective in run.objectives:
        best = "—"
        if not run.finished.empty:
            row = _ranked(run.finished, objective).iloc[0]
            genes = ", ".join(_gene_lines(row))
            best = f"{format_value(row[objective.metric])} (trial {row['trial_id']}: {genes})"
        rows.append((f"best {objective.metric}{run.where}", best))
    return _section(
        "summary",
        "Summary",
        "The run as recorded in the results database; each best value comes with the "
        "trial and genome that reached it.",
        html_table(rows),
    )


def _trial_counts(run: _Run) -> str:
    statuses, stuck = run.frame["status"], int(run.stalled.sum())
    done = f"{int((statuses == SUCCESS).sum())} done"
    if stuck:
        done += f" ({stuck} of them stalled)"
    return (
        f"{done}, {int(statuses.isin(FAILURES).sum())} failed, "
        f"{int(statuses.isin(ACTIVE).sum())} queued or running, {int(statuses.isin(LOST).sum())}"
        " lost to a dead worker or an interruption and run again"
    )


def _baseline_text(baseline: float | None) -> str:
    if baseline is None:
        return (
            "not recorded (a run made before evo stored it; `evo resume` or `evo validate` "
            "stores it), so no trial is judged stalled"
        )
    return f"{baseline:.4g} bits/byte (a trial no better than this stalled; see Failures)"


def _rungs(run: _Run) -> str:
    objective, space = run.objectives[0], run.space
    how = (
        "How many genomes each rung trained, and how many of them advanced to the next "
        f"(the best 1/{space.search.eta:g} of a rung's results advance, continuing from their "
        f"checkpoints); below, every {objective.metric} scored at each rung, stalled "
        "trials left out."
    )
    rows = rung_rows(run.frame, space)
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
        return _section("rungs", "Rungs", how, table + _note(run.empty))
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


def _progress(run: _Run) -> str:
    finished = successful_trials(run.learned, run.objectives)
    how = (
        "For each generation, the best value found up to and including it, and the median "
        "of the trials created in it, for each objective (stalled trials left out); a "
        "falling gap means the population converges."
    )
    if finished.empty:
        return _section("progress", "Objectives per generation", how, _note(run.empty))
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
        fig.update_yaxes(title_text=_axis_title(objective), row=row, col=1)
    fig.update_xaxes(title_text="generation", dtick=1, row=len(run.objectives), col=1)
    fig.update_layout(height=120 + 260 * len(run.objectives))
    return _section("progress", "Objectives per generation", how, _figure(fig))


def _generation_lines(finished: pd.DataFrame, objective: Objective) -> dict[str, pd.Series]:
    """Per generation: the best value up to it (a line that never gets worse, unlike the
    best of each generation alone) and the generation's median."""
    values = finished.groupby("generation")[objective.metric]
    best = (values.agg(objective.best) * objective.sign).cummin() * objective.sign
    return {"best so far": best, "median of the generation": values.median()}


def _anytime(run: _Run) -> str:
    objective = run.objectives[0]
    how = (
        f"The best {objective.metric}{run.where} found so far against the training the "
        "search had spent until then (every trial's tokens, cool-downs, failed and stalled "
        "trials included): how much a better model costs."
    )
    curve = anytime_curve(run.frame, run.space, objective, run.info.unigram_bits_per_byte)
    curve = curve[curve["best"].notna()]
    if curve.empty:
        return _section("anytime", "Best against compute", how, _note(run.empty))
    fig = go.Figure(
        go.Scatter(x=curve["tokens"], y=curve["best"], mode="lines+markers", line_shape="hv")
    )
    fig.update_layout(
        height=420, xaxis_title="training tokens spent", yaxis_title=_axis_title(objective)
    )
    return _section("anytime", "Best against compute", how, _figure(fig))


def _history(run: _Run) -> str:
    """With one objective there is no front to draw: its values in trial order, and the
    best so far."""
    first, finished = run.objectives[0], run.finished
    how = (
        f"The optimisation history: each successful trial's {first.metric}{run.where} in "
        "the order trials were made (stalled trials left out), and the best so far; the "
        "best trial is circled. Hover for genome and metrics."
    )
    if finished.empty:
        return _section("history", "Optimisation history", how, _note(run.empty))
    ordered = finished.sort_values("trial_id")
    trials = go.Scatter(
        x=ordered["trial_id"],
        y=ordered[first.metric],
        mode="markers",
        name="trial",
        marker={"color": qualitative.Plotly[0]},
        hovertext=_hover_texts(ordered),
        hovertemplate="%{hovertext}<extra></extra>",
    )
    line = go.Scatter(
        x=ordered["trial_id"],
        y=(ordered[first.metric] * first.sign).cummin() * first.sign,
        mode="lines",
        line={"shape": "hv", "color": qualitative.Plotly[1]},
        name="best so far",
    )
    top = _ranked(finished, first).head(1)
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
        xaxis_title="trial",
        yaxis_title=_axis_title(first),
        legend=_LEGEND_ABOVE,
    )
    return _section("history", "Optimisation history", how, _figure(fig))


def _pareto(run: _Run, front_axes: tuple[str, str] | None = None) -> str:
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
        return _section("pareto", "Pareto front", how, _note(run.empty))
    front = pareto_front(finished, run.objectives)
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
    fig.update_layout(
        height=560,
        xaxis_title=_axis_title(first),
        yaxis_title=_axis_title(second),
        legend=_LEGEND_ABOVE,
    )
    return _section("pareto", "Pareto front", how, pairs + _figure(fig))


def _genes(run: _Run) -> str:
    first, space = run.objectives[0], run.space
    lowest = " at the lowest rung (every genome has one, all at the same budget)"
    how = (
        f"One line per successful trial{lowest if run.rungs else ''} across its gene "
        f"values (then its objectives; stalled trials left out), coloured by {first.metric}: "
        "the best in red, the others from dark (better) to pale blue. Log-scaled genes are "
        "labelled with their values. Drag along an axis to select."
    )
    finished = successful_trials(run.learned[run.learned["rung"] == 0], run.objectives)
    if finished.empty:
        return _section("genes", "Genes", how, _note(run.empty_at(0)))
    finished = _ranked(finished, first).iloc[::-1]  # the best drawn last, on top
    names = [c.removeprefix("gene.") for c in _gene_columns(run)]
    dimensions = [_dimension(n, finished[f"gene.{n}"], space.genes.get(n)) for n in names]
    dimensions += [
        {"label": o.metric, "values": finished[o.metric].to_numpy(dtype=float)}
        for o in run.objectives
    ]
    values = finished[first.metric].to_numpy(dtype=float)
    line = {
        "color": values,
        "colorscale": _best_colorscale(values, first),
        "showscale": True,
        "colorbar": {"title": {"text": _unit_title(first.metric)}},
    }
    # Angled axis titles: level ones overlap once the axes are narrower than their names.
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line, labelangle=-25))
    fig.update_layout(height=560, margin={"l": 70, "r": 90, "t": 140})
    return _section("genes", "Genes", how, _figure(fig))


def _best_colorscale(values: np.ndarray, objective: Objective) -> list[list[Any]]:
    """A colour scale over `values` on which only the best value (and its ties) is red:
    the others run from dark blue (better) to pale blue (worse). The red band ends half
    way to the next best value, so no other line can fall in it."""
    low, high = float(np.min(values)), float(np.max(values))
    if high == low:
        return [[0.0, BEST_RED], [1.0, BEST_RED]]
    costs = np.unique(values * objective.sign)  # best first
    edge = (costs[1] - costs[0]) / (high - low) / 2
    if objective.sign > 0:  # the best is the lowest value
        return [[0.0, BEST_RED], [edge, BEST_RED], [edge, DARK_BLUE], [1.0, PALE_BLUE]]
    return [[0.0, PALE_BLUE], [1.0 - edge, DARK_BLUE], [1.0 - edge, BEST_RED], [1.0, BEST_RED]]


def _importance(run: _Run) -> str:
    first = run.objectives[0]
    how = (
        f"How much each gene decides {first.metric}, by Optuna's PED-ANOVA over the "
        f"successful trials{' at the lowest rung' if run.rungs else ''} (at least "
        f"{MIN_TRIALS}; the importances sum to 1): how differently a gene is set among the "
        "best tenth than among all. Then, for the most important genes, every trial's "
        f"{first.metric} against the gene's value (boxes for choices)."
    )
    trials = successful_trials(run.learned[run.learned["rung"] == 0], run.objectives)
    importance = gene_importance(trials, run.space, first)
    if importance is None:
        note = f"{len(trials)} successful trials to judge by; at least {MIN_TRIALS} are needed."
        return _section("importance", "Gene importance", how, _note(note))
    bars = go.Figure(go.Bar(x=list(importance.values()), y=list(importance), orientation="h"))
    bars.update_layout(
        height=80 + 28 * len(importance),
        yaxis={"autorange": "reversed", "title": {"text": "gene"}},
        xaxis={"title": {"text": "importance (PED-ANOVA; sums to 1)"}},
        margin={"l": 140},
    )
    top = list(importance)[:SLICE_GENES]
    slices = make_subplots(rows=1, cols=len(top), subplot_titles=top, shared_yaxes=True)
    for column, gene in enumerate(top, start=1):
        x, y = trials[f"gene.{gene}"], trials[first.metric]
        domain = run.space.genes[gene]
        if domain.choice is not None:
            slices.add_trace(go.Box(x=x.astype(str), y=y, name=gene, boxpoints="all"), 1, column)
        else:
            slices.add_trace(go.Scatter(x=x, y=y, mode="markers", name=gene), 1, column)
            if domain.log:
                slices.update_xaxes(type="log", row=1, col=column)
    slices.update_layout(height=380, showlegend=False)
    slices.update_yaxes(title_text=_axis_title(first), row=1, col=1)
    return _section("importance", "Gene importance", how, _figure(bars) + _figure(slices))


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
    labels = [MISSING if _missing(v) else format_value(v) for v in column]
    known = (
        [format_value(v) for v in domain.values()] if domain is not None and domain.choice else []
    )
    categories = known + sorted(set(labels) - set(known))
    return {
        "label": name,
        "values": pd.Categorical(labels, categories=categories).codes,
        "tickvals": list(range(len(categories))),
        "ticktext": categories,
    }


def _curves(run: _Run, storage: Storage) -> str:
    objective, finished = run.objectives[0], run.finished
    fig = go.Figure()
    top = _ranked(finished, objective).head(TOP_CURVES)
    ranked = top[["genome_id", objective.metric]].itertuples(index=False, name=None)
    for i, (genome_id, value) in enumerate(ranked):
        color = qualitative.Plotly[i % len(qualitative.Plotly)]
        name = f"genome {genome_id} ({objective.metric} {format_value(value)})"
        trials = run.frame[(run.frame["genome_id"] == genome_id) & (run.frame["status"] == SUCCESS)]
        for trial_id in trials.sort_values("rung")["trial_id"]:
            _add_curve(fig, pd.DataFrame(storage.curve(int(trial_id))), name, color)
    how = _curves_text(fig, len(top), objective, run.rungs)
    if not fig.data:
        message = run.empty if finished.empty else "No learning curves were recorded."
        return _section("curves", "Learning curves", how, _note(message))
    fig.update_layout(height=520, xaxis_title="tokens trained", yaxis_title="loss (nats per token)")
    return _section("curves", "Learning curves", how, _figure(fig))


def _curves_text(fig: go.Figure, genomes: int, objective: Objective, rungs: bool) -> str:
    """How to read the learning curves, naming only what `fig` draws."""
    lines = [t for t in fig.data if t.mode == "lines"]
    parts = [
        f"Training loss (nats per token: the mean cross-entropy of the next token) against "
        f"tokens trained, for the {genomes} best genomes by {objective.metric}, one colour each"
    ]
    if any(t.line.dash == "dash" for t in lines):
        parts.append("solid while pretraining, dashed while adapting")
    if any(t.mode == "markers" for t in fig.data):
        parts.append("dots are validation losses, in the same unit")
    text = "; ".join(parts) + "."
    if rungs:
        text += (
            " A genome that advanced has one segment per rung, each continuing the last "
            "from where its cool-down began."
        )
    return text


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


def _trials(run: _Run) -> str:
    first = run.objectives[0]
    how = (
        f"Every trial, best {first.metric} first (trials without a value last): its genome, "
        "rung, status (stalled for a success that learned nothing; see Failures), "
        "objectives and genes."
    )
    if run.frame.empty:
        return _section("trials", "Trials", how, _note("No trials yet."))
    genes = _gene_columns(run)
    generational = run.space.search.mode == "generational"
    header = [
        "trial",
        "genome",
        "rung",
        *(["generation"] if generational else []),
        "status",
        *(_unit_title(o.metric) for o in run.objectives),
        *(c.removeprefix("gene.") for c in genes),
    ]
    rows = [
        [
            row["trial_id"],
            row["genome_id"],
            row["rung"] + 1,
            *([format_value(row["generation"])] if generational else []),
            STALLED if run.stalled[index] else row["status"],
            *(_metric_text(row, o.metric) for o in run.objectives),
            *(format_value(row[c]) for c in genes),
        ]
        for index, row in _ranked(run.frame, first).iterrows()
    ]
    table = html_table(rows, header, css_class="sortable")
    return _section("trials", "Trials", how, f'<div class="wide">{table}</div>')


def _gene_columns(run: _Run) -> list[str]:
    """The frame's gene columns in the space's order, then genes the space no longer has."""
    columns = [f"gene.{n}" for n in run.space.gene_names if f"gene.{n}" in run.frame]
    return columns + [c for c in run.frame if c.startswith("gene.") and c not in columns]


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


def _failures(run: _Run) -> str:
    frame, baseline = run.frame, run.info.unigram_bits_per_byte
    counts = frame["status"].value_counts()
    count_rows = [(s, int(counts[s])) for s in TRIAL_STATUSES if s in counts]
    if run.stalled.any():
        count_rows.append((f"{STALLED} (of the done)", int(run.stalled.sum())))
    body = html_table(count_rows, ("status", "trials")) if count_rows else _note("No trials yet.")
    listed = frame[frame["status"].isin(FAILURES) | run.stalled]
    rows = [
        (
            row["trial_id"],
            format_value(row["generation"]),
            row["rung"] + 1,
            STALLED if run.stalled[index] else row["status"],
            _stalled_reason(row, baseline) if run.stalled[index] else _first_line(row["error"]),
        )
        for index, row in listed.iterrows()
    ]
    if rows:
        body += html_table(rows, ("trial", "generation", "rung", "status", "error or reason"))
    else:
        body += _note("No trial has failed or stalled.")
    how = (
        "How many trials ended in each status, then every trial that failed, timed out, "
        "was invalid or diverged, with the first line of its error, and every trial that "
        f"stalled. {STALLED_RULE} Stalled trials stay in the search; the charts leave them "
        "out. "
        + (
            f"This run's unigram baseline is {baseline:.4g} bits/byte."
            if baseline is not None
            else "This run has no unigram baseline recorded, so none is judged stalled."
        )
    )
    return _section("failures", "Failures", how, body)


def _stalled_reason(row: pd.Series, baseline: float | None) -> str:
    return (
        f"bits per byte {format_value(row['bits_per_byte'])}, no better than the unigram baseline "
        f"{format_value(baseline)}"
    )


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
        yaxis_title=f"validated {_unit_title(report.metric)}",
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
            format_value(g.candidate.value),
            g.candidate.rung + 1,
            format_value(g.mean),
            "—" if g.spread is None else format_value(g.spread),
            len(g.values),
            g.rank,
        )
        for g in genomes
    ]
    header = ("genome", "search rank", "search", "rung", "validated", "std", "seeds", "rank")
    return _section("validation", "Validation", how, _figure(fig) + html_table(rows, header))


def _promotions(
    run: _Run,
    promotions: list[PromotionRecord],
    genomes: dict[int, dict[str, Any]],
    validated: ValidationReport | None,
) -> str:
    if not promotions:
        return ""
    metric = run.objectives[0].metric
    searched = search_scores(run.frame, run.objectives[0])
    means = {g.candidate.genome_id: g for g in validated.genomes} if validated else {}
    rows = [
        (
            p.genome_id,
            ", ".join(_gene_text(k, v) for k, v in genomes.get(p.genome_id, {}).items()),
            _search_text(searched.get(p.genome_id), len(run.space.rung_budgets())),
            format_value(means[p.genome_id].mean) if p.genome_id in means else "—",
            format_value((p.metrics or {}).get(metric)),
            format_value((p.metrics or {}).get("tokens")),
            format_value((p.metrics or {}).get("steps")),
            format_value((p.metrics or {}).get(EVAL_TOKENS)),
            p.status,
            p.out_dir,
        )
        for p in promotions
    ]
    how = (
        f"Genomes trained further after the search (`evo promote`): the genome's {metric} "
        "in the search, at the highest rung it reached, and its mean over seeds where `evo "
        "validate` retrained it, beside the promoted model's; then the tokens and steps "
        "the promoted model trained, and the validation tokens it was scored on."
    )
    header = (
        "genome",
        "genes",
        f"search {metric} (rung)",
        f"validated {metric}",
        f"promoted {metric}",
        "tokens trained",
        "steps",
        "tokens evaluated",
        "status",
        "out dir",
    )
    body = f'<div class="wide">{html_table(rows, header)}</div>'
    return _section("promotions", "Promotions", how, body)


def _search_text(score: SearchScore | None, rungs: int) -> str:
    if score is None:
        return "—"
    return f"{format_value(score.value)} (rung {score.rung + 1} of {rungs})"


# Pieces


def _ranked(frame: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """The rows best first by the objective; ties keep their order."""
    ascending = objective.sign > 0
    return frame.sort_values(objective.metric, ascending=ascending, kind="stable")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def format_value(value: Any) -> str:
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
    return f"{name}={format_value(value)}"


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
        lines += [f"{m}: {_metric_text(row, m)}" for m in METRICS if _shown(row, m)]
        texts.append("<br>".join(html.escape(line) for line in lines))
    return texts


def _shown(row: pd.Series, metric: str) -> bool:
    """Whether a trial's hover text lists `metric`: when measured, or when it could not be
    (a GPU-only metric of a trial that trained elsewhere says so)."""
    return not _missing(row[metric]) or _metric_text(row, metric) == NOT_MEASURED


def _metric_text(row: pd.Series, metric: str) -> str:
    """A trial's value of `metric`, or why it has none: a GPU-only metric is not measured
    for a trial that trained on another device."""
    device = row.get("device")
    elsewhere = not _missing(device) and not str(device).startswith("cuda")
    if _missing(row[metric]) and METRICS[metric].gpu_only and elsewhere:
        return NOT_MEASURED
    return format_value(row[metric])


def _unit_title(metric: str) -> str:
    """The metric's name with its unit, where it has one."""
    unit = METRICS[metric].unit
    return f"{metric} ({unit})" if unit else metric


def _axis_title(objective: Objective) -> str:
    """The objective's name and unit, and on a second line (one would not fit beside a
    short subplot) which way is better."""
    better = "lower" if objective.sign > 0 else "higher"
    return f"{_unit_title(objective.metric)}<br>{better} is better"


# A legend in a row above the plot, clear of the plot, its axes and any colour bar.
_LEGEND_ABOVE = {"orientation": "h", "x": 0.0, "xanchor": "left", "y": 1.02, "yanchor": "bottom"}


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def _note(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def html_table(
    rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, css_class: str = ""
) -> str:
    head = ""
    if header is not None:
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        head = f"<thead><tr>{cells}</tr></thead>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>"
        for row in rows
    )
    attribute = f' class="{css_class}"' if css_class else ""
    return f"<table{attribute}>{head}<tbody>{body}</tbody></table>"


def _figure(fig: go.Figure) -> str:
    fig.update_layout(template="plotly_white")
    return fig.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False})


def _section(anchor: str, title: str, how_to_read: str, body: str) -> str:
    return (
        f'<section id="{anchor}"><h2>{html.escape(title)}</h2>'
        f'<p class="how">{html.escape(how_to_read)}</p>{body}</section>\n'
    )


def _page(title: str, subtitle: str, script: str, sections: Sequence[str]) -> str:
    # plotly.js in the head, once, before any figure that needs it.
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{PAGE_CSS}</style>\n"
        f"{script}\n{_TABLE_SCRIPT}\n</head>\n<body>\n"
        f'<h1>{html.escape(title)}</h1>\n<p class="how">{html.escape(subtitle)}</p>\n'
        f"{''.join(sections)}</body></html>\n"
    )
