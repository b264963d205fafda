"""Every trial: the sortable table, the workers' timelines, and the trials that failed
or stalled."""

from __future__ import annotations

import pandas as pd
import plotly.express as px

from evo.report.frames import ranked
from evo.report.labels import gene_columns, metric_text, trial_cell, unit_title
from evo.report.markup import figure, first_line, format_value, html_table, note, section
from evo.report.run import Run
from evo.storage import TRIAL_STATUSES
from evo.summary import FAILURES, STALLED, STALLED_RULE


def trials_section(run: Run) -> str:
    first = run.objectives[0]
    order = f"best {first.metric} first (trials without a value last)"
    if run.rungs:
        order = (
            "by rung, the top first (scores at different rungs are not comparable), and within "
            f"a rung {order}"
        )
    how = (
        f"Every trial, {order}: its genome, rung, status (stalled for a success that learned "
        "nothing; see Failures), objectives and genes. Click a heading to sort by it; the "
        "box keeps the rows with every word typed, or with a column's value (rung:2)."
    )
    if run.frame.empty:
        return section("trials", "Trials", how, note("No trials yet."))
    genes = gene_columns(run)
    generational = run.space.search.mode == "generational"
    objectives = [unit_title(o.metric) for o in run.objectives]
    header = [
        "trial",
        "genome",
        "rung",
        *(["generation"] if generational else []),
        "status",
        *objectives,
        *(c.removeprefix("gene.") for c in genes),
    ]
    rows = [
        [
            trial_cell(run, row["trial_id"]),
            row["genome_id"],
            row["rung"] + 1,
            *([format_value(row["generation"])] if generational else []),
            STALLED if run.stalled[index] else row["status"],
            *(metric_text(row, o.metric) for o in run.objectives),
            *(format_value(row[c]) for c in genes),
        ]
        for index, row in _table_order(run).iterrows()
    ]
    marks = {objectives[0]: "ascending" if first.sign > 0 else "descending"}
    if run.rungs:
        marks["rung"] = "descending"
    table = html_table(rows, header, css_class="sortable", order=marks)
    return section("trials", "Trials", how, f'<div class="wide">{table}</div>')


def _table_order(run: Run) -> pd.DataFrame:
    """The trials by rung, the top first, then best first by the first objective (stable:
    ties, and trials without a value, in trial order)."""
    best_first = ranked(run.frame, run.objectives[0])
    return best_first.sort_values("rung", ascending=False, kind="stable")


def workers_section(frame: pd.DataFrame) -> str:
    how = (
        "What each worker did over time: one bar per trial, from its start to its end on "
        "the worker that ran it, coloured by rung; gaps are idle workers."
    )
    ran = frame[frame["started_at"].notna() & frame["finished_at"].notna()].copy()
    if ran.empty:
        return section("workers", "Workers", how, note("No trial has run yet."))
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
    fig.update_layout(
        height=160 + 40 * ran["where"].nunique(), yaxis_title="worker", xaxis_title="time (UTC)"
    )
    return section("workers", "Workers", how, figure(fig))


def failures_section(run: Run) -> str:
    frame, baseline = run.frame, run.info.unigram_bits_per_byte
    counts = frame["status"].value_counts()
    count_rows = [(s, int(counts[s])) for s in TRIAL_STATUSES if s in counts]
    if run.stalled.any():
        count_rows.append((f"{STALLED} (of the done)", int(run.stalled.sum())))
    body = html_table(count_rows, ("status", "trials")) if count_rows else note("No trials yet.")
    listed = frame[frame["status"].isin(FAILURES) | run.stalled]
    generational = run.space.search.mode == "generational"
    rows = [
        (
            trial_cell(run, row["trial_id"]),
            *([format_value(row["generation"])] if generational else []),
            row["rung"] + 1,
            STALLED if run.stalled[index] else row["status"],
            _stalled_reason(row, baseline) if run.stalled[index] else first_line(row["error"]),
        )
        for index, row in listed.iterrows()
    ]
    if rows:
        header = ["trial", *(["generation"] if generational else []), "rung", "status"]
        header.append("error or reason")
        body += html_table(rows, header)
    else:
        body += note("No trial has failed or stalled.")
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
    return section("failures", "Failures", how, body)


def _stalled_reason(row: pd.Series, baseline: float | None) -> str:
    return (
        f"bits per byte {format_value(row['bits_per_byte'])}, no better than the unigram baseline "
        f"{format_value(baseline)}"
    )
