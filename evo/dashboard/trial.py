"""One trial's page: what the database holds of it (where and when it ran, its seed, the
trial it continued, its budget and what it trained of it), its metrics, its genes, its
genome's trials at every rung it reached, their learning curve, and its error."""

from __future__ import annotations

import html

import pandas as pd

from evo.describe import budget_text, run_space
from evo.metrics import METRICS
from evo.report.labels import metric_text, unit_title
from evo.report.markup import (
    Html,
    first_line,
    format_value,
    html_table,
    link,
    note,
    section,
    time_text,
)
from evo.storage import RunInfo, Storage, TrialRecord
from evo.summary import STALLED, stalled


def trial_sections(
    storage: Storage, info: RunInfo, record: TrialRecord, trial_url: str
) -> list[str]:
    """The page's sections; `trial_url` is a format taking a trial id, for links."""
    frame = storage.trials_frame(info.name)
    stalled_ids = stalled(storage.trial_summaries(info.name), info.unigram_bits_per_byte)
    stuck = frame["trial_id"].isin(stalled_ids)
    (index,) = frame.index[frame["trial_id"] == record.id]
    row = frame.loc[index]
    status = row["status"]
    if stuck[index]:
        status = f"{STALLED} (done, but learned nothing: see the run's Failures)"
    genome = frame[frame["genome_id"] == record.genome_id].sort_values(["rung", "trial_id"])
    sections = [
        _facts_section(info, record, status, trial_url),
        _metrics_section(row),
        _genes_section(row),
        _rungs_section(info, genome, stuck, trial_url),
        section("curve", "Learning curve", _CURVE_HOW, curve_figure(storage, genome)),
    ]
    if record.error:
        error = f"<pre>{html.escape(record.error)}</pre>"
        sections.append(section("error", "Error", first_line(record.error), error))
    return sections


def _facts_section(info: RunInfo, record: TrialRecord, status: str, trial_url: str) -> str:
    space = run_space(info)
    budgets = space.rung_budgets()
    budget = record.budget or budgets[record.rung]
    facts: list[tuple[str, object]] = [
        ("status", status),
        ("genome", record.genome_id),
        ("rung", f"{record.rung + 1} of {len(budgets)}"),
        ("the rung's budget", budget_text(budget)),
        ("tokens this trial", format_value(record.metrics.get("tokens"))),
        ("steps this trial", format_value(record.metrics.get("steps"))),
        ("continued from", _continued(record, trial_url)),
        ("seed", format_value(record.seed)),
    ]
    if space.search.mode == "generational":
        facts.append(("generation", format_value(record.generation)))
    if record.attempt:
        facts.append(("attempt", f"{record.attempt + 1} (the workers of the earlier were lost)"))
    facts += [
        ("host", record.host or "—"),
        ("device", record.device or "—"),
        ("worker", record.worker or "—"),
        ("started", time_text(record.started_at)),
        ("finished", time_text(record.finished_at)),
        ("wall seconds", format_value(record.metrics.get("wall_seconds"))),
    ]
    how = (
        "What the database holds of this trial. A trial that continued its genome's "
        "checkpoint from the rung below trains only the rest of its rung's budget: its "
        "tokens are those it trained itself."
    )
    return section("trial", "Trial", how, html_table(facts))


def _continued(record: TrialRecord, trial_url: str) -> Html | str:
    if record.continued_from is None:
        return "— (trained from scratch)"
    return link(trial_url.format(record.continued_from), f"trial {record.continued_from}")


def _metrics_section(row: pd.Series) -> str:
    pretrain = [m for m in METRICS if not _missing(row.get(f"pretrain.{m}"))]
    header = ["metric", "value", *(["before adapting"] if pretrain else []), "what it is"]
    rows = [
        [
            unit_title(name),
            metric_text(row, name),
            *([format_value(row.get(f"pretrain.{name}"))] if pretrain else []),
            metric.description,
        ]
        for name, metric in METRICS.items()
    ]
    how = "Every metric the trial measured" + (
        ", at its end and, for a trial that adapted to a second corpus, before adapting."
        if pretrain
        else "; — where it has none (yet)."
    )
    return section("metrics", "Metrics", how, f'<div class="wide">{html_table(rows, header)}</div>')


def _genes_section(row: pd.Series) -> str:
    genes = [
        (key.removeprefix("gene."), format_value(value))
        for key, value in row.items()
        if str(key).startswith("gene.") and not _missing(value)
    ]
    return section("genes", "Genes", "The genome's genes.", html_table(genes, ("gene", "value")))


def _rungs_section(info: RunInfo, genome: pd.DataFrame, stuck: pd.Series, trial_url: str) -> str:
    space = run_space(info)
    budgets = space.rung_budgets()
    objectives = [o.metric for o in space.search.objectives]
    header = [
        *("trial", "rung", "the rung's budget", "status"),
        *(unit_title(m) for m in objectives),
        *("tokens this trial", "wall seconds"),
    ]
    rows = [
        [
            link(trial_url.format(row["trial_id"]), row["trial_id"]),
            row["rung"] + 1,
            budget_text(budgets[row["rung"]]) if row["rung"] < len(budgets) else "—",
            STALLED if stuck[index] else row["status"],
            *(metric_text(row, m) for m in objectives),
            format_value(row["tokens"]),
            format_value(row["wall_seconds"]),
        ]
        for index, row in genome.iterrows()
    ]
    how = (
        "Every trial of this genome: one per rung it reached (each continuing the one "
        "below), and any attempt whose worker was lost."
    )
    body = f'<div class="wide">{html_table(rows, header)}</div>'
    return section("rungs", "At every rung its genome reached", how, body)


_CURVE_HOW = (
    "Training loss against tokens trained, for every trial of the genome: the rungs "
    "continue one another, so together they are one run; an adapt stage, which counts "
    "its tokens from zero again, is a dashed line of its own."
)


def curve_figure(storage: Storage, genome: pd.DataFrame) -> str:
    """The learning curves of the genome's trials, as one figure."""
    import plotly.graph_objects as go  # draws: loads plotly

    from evo.report.markup import figure

    fig = go.Figure()
    for trial_id, rung in genome[["trial_id", "rung"]].itertuples(index=False):
        points = pd.DataFrame(storage.curve(int(trial_id)))
        if points.empty or "train_loss" not in points:
            continue
        stages = points.groupby("stage", sort=False) if "stage" in points else [("", points)]
        for stage, part in stages:
            adapt = stage == "adapt"
            fig.add_scatter(
                x=part["tokens"],
                y=part["train_loss"],
                mode="lines",
                name=f"rung {rung + 1}" + (", adapt" if adapt else ""),
                line={"dash": "dash"} if adapt else {},
            )
    if not fig.data:
        return note("No learning curve was recorded yet.")
    fig.update_layout(
        xaxis_title="tokens trained", yaxis_title="training loss (nats per token)", height=420
    )
    return figure(fig)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and value != value)
