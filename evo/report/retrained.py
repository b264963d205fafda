"""Genomes trained again after the search: `evo validate`'s retraining with other seeds
against the search's ranking, and `evo promote`'s models beside their search scores."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from evo.describe import budget_text
from evo.metrics import EVAL_TOKENS
from evo.report.labels import gene_text, unit_title
from evo.report.markup import figure, format_value, html_table, section
from evo.report.run import Run
from evo.storage import PromotionRecord
from evo.summary import SearchScore, search_scores
from evo.validate import ValidationReport


def validation_section(report: ValidationReport | None) -> str:
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
        yaxis_title=f"validated {unit_title(report.metric)}",
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
    if report.check is not None:
        how += f" The search's predictions at the target: {report.check.describe()}."
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
    return section("validation", "Validation", how, figure(fig) + html_table(rows, header))


def promotions_section(
    run: Run,
    promotions: list[PromotionRecord],
    genomes: dict[int, dict[str, Any]],
    validated: ValidationReport | None,
) -> str:
    if not promotions:
        return ""
    metric = run.objectives[0].metric
    searched = search_scores(run.trials, run.objectives[0])
    means = {g.candidate.genome_id: g for g in validated.genomes} if validated else {}
    rows = [
        (
            p.genome_id,
            ", ".join(gene_text(k, v) for k, v in genomes.get(p.genome_id, {}).items()),
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
    return section("promotions", "Promotions", how, body)


def _search_text(score: SearchScore | None, rungs: int) -> str:
    if score is None:
        return "—"
    return f"{format_value(score.value)} (rung {score.rung + 1} of {rungs})"
