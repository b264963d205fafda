"""The forecast of a target beyond the top rung: the best genomes' measured rung scores
and their predicted score at the target, with its interval."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.colors import qualitative

from evo.describe import budget_text
from evo.report.labels import unit_title
from evo.report.markup import figure, format_value, html_table, section
from evo.report.run import Run
from evo.storage import Storage
from evo.summary import ForecastSummary, forecast_summary
from evo.validate import ValidationReport, target_seed_noise

TOP_PREDICTED = 8  # genomes drawn and listed


def predictions_section(run: Run, storage: Storage, validated: ValidationReport | None) -> str:
    """The section, or nothing when the run forecasts no target (its target is the top
    rung, or its first objective does not extrapolate)."""
    forecast = storage.forecast(run.info.name)
    shown = forecast_summary(
        run.trials, run.space, forecast, target_seed_noise(validated, forecast)
    )
    if shown is None or not shown.genomes:
        return ""
    budgets = [b[next(iter(shown.budget))] for b in run.space.rung_budgets()]
    means = {}
    if validated is not None and validated.budget == shown.budget:
        means = {g.candidate.genome_id: g.mean for g in validated.genomes}
    top = shown.genomes[:TOP_PREDICTED]
    rows = [
        (
            g.genome_id,
            *(format_value(g.scores.get(rung)) for rung in range(len(budgets))),
            format_value(g.mean),
            f"{format_value(g.low)} to {format_value(g.high)}",
            format_value(means.get(g.genome_id)),
        )
        for g in top
    ]
    header = (
        "genome",
        *(f"rung {rung + 1}" for rung in range(len(budgets))),
        "predicted",
        f"{shown.level:.0%} interval",
        "validated",
    )
    how = (
        f"The target, {budget_text(shown.budget)}, is {shown.beyond:.3g}× the top rung, so "
        f"the search ranks its genomes by their {shown.metric} predicted there from their "
        f"rung scores (docs/extrapolation.md), and its pick is the first below. Each line "
        "joins a genome's measured scores at the rungs it reached to its prediction at the "
        f"target (bars: the {shown.level:.0%} interval, one seed's score); the validated "
        f"column is `evo validate`'s mean at the target. The law: {shown.describe()}."
    )
    if validated is not None and validated.check is not None:
        how += f" Against the validated scores: {validated.check.describe()}."
    body = figure(_figure(shown, budgets, means)) + html_table(rows, header)
    return section("predictions", "Predictions at the target", how, body)


def _figure(shown: ForecastSummary, budgets: list[float], means: dict[int, float]) -> go.Figure:
    target = next(iter(shown.budget.values()))
    fig = go.Figure()
    for i, genome in enumerate(shown.genomes[:TOP_PREDICTED]):
        colour = qualitative.Plotly[i % len(qualitative.Plotly)]
        rungs = sorted(genome.scores)
        name = f"genome {genome.genome_id}"
        fig.add_trace(
            go.Scatter(
                x=[budgets[r] for r in rungs] + [target],
                y=[genome.scores[r] for r in rungs] + [genome.mean],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": colour},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": [0.0] * len(rungs) + [genome.high - genome.mean],
                    "arrayminus": [0.0] * len(rungs) + [genome.mean - genome.low],
                },
            )
        )
        if genome.genome_id in means:
            fig.add_trace(
                go.Scatter(
                    x=[target],
                    y=[means[genome.genome_id]],
                    mode="markers",
                    marker={"symbol": "x", "size": 10, "color": colour},
                    name=f"{name} validated",
                    legendgroup=name,
                    showlegend=False,
                )
            )
    fig.update_layout(
        height=460,
        xaxis={"type": "log", "title": f"training budget ({next(iter(shown.budget))})"},
        yaxis_title=unit_title(shown.metric),
    )
    return fig
