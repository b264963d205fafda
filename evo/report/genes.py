"""Which genes the successful trials have and which matter: parallel coordinates over
every gene, then each gene's importance (PED-ANOVA) and the objective against the most
important genes' values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from evo.importance import MIN_TRIALS, gene_importance
from evo.report.frames import ranked, successful_trials
from evo.report.labels import axis_title, gene_columns, unit_title
from evo.report.markup import figure, format_value, is_missing, note, section
from evo.report.run import Run
from evo.report.ticks import round_ticks
from evo.space import Domain, Objective

SLICE_GENES = 4  # slice plots for this many of the most important genes
MISSING = "(missing)"  # the category of a gene a genome lacks
# Parallel coordinates: the best line alone is dark red; the rest dark (better) to pale blue.
BEST_RED, DARK_BLUE, PALE_BLUE = "#b2182b", "#08306b", "#c6dbef"


def genes_section(run: Run) -> str:
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
        return section("genes", "Genes", how, note(run.empty_at(0)))
    finished = ranked(finished, first).iloc[::-1]  # the best drawn last, on top
    names = [c.removeprefix("gene.") for c in gene_columns(run)]
    dimensions = [_dimension(n, finished[f"gene.{n}"], space.genes.get(n)) for n in names]
    for objective in run.objectives:
        values = finished[objective.metric].to_numpy(dtype=float)
        dimensions.append(
            {"label": objective.metric, "values": values, **round_ticks(values).dimension()}
        )
    values = finished[first.metric].to_numpy(dtype=float)
    line = {
        "color": values,
        "colorscale": _best_colorscale(values, first),
        "showscale": True,
        "colorbar": {"title": {"text": unit_title(first.metric)}},
    }
    # Angled axis titles: level ones overlap once the axes are narrower than their names.
    fig = go.Figure(go.Parcoords(dimensions=dimensions, line=line, labelangle=-25))
    fig.update_layout(height=560, margin={"l": 70, "r": 90, "t": 140})
    return section("genes", "Genes", how, figure(fig))


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


def _dimension(name: str, column: pd.Series, domain: Domain | None) -> dict[str, Any]:
    """One parallel-coordinates axis. Ranges are numbers as they are, over the domain's
    bounds and ticked at round values (whole numbers for an int gene; log ranges on a log
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
        bounds = domain.bounds if domain is not None else ()
        ticks = round_ticks([*values, *bounds], whole=domain is not None and domain.kind == "int")
        return {"label": name, "values": values, **ticks.dimension()}
    labels = [MISSING if is_missing(v) else format_value(v) for v in column]
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


def importance_section(run: Run) -> str:
    first = run.objectives[0]
    where = " at the lowest rung" if run.rungs else ""
    trials = successful_trials(run.learned[run.learned["rung"] == 0], run.objectives)
    how = (
        f"How much each gene decides {first.metric}, by Optuna's PED-ANOVA over the "
        f"{len(trials)} successful trials{where} (it needs at least {MIN_TRIALS}; the "
        "importances sum to 1): how differently a gene is set among the best tenth than "
        f"among all. Then, for the most important genes, every trial's {first.metric} "
        "against the gene's value (boxes for choices)."
    )
    importance = gene_importance(trials, run.space, first)
    if importance is None:
        too_few = (
            f"{len(trials)} successful trials{where} so far: too few to say which genes "
            f"matter (importance is drawn from {MIN_TRIALS})."
        )
        return section("importance", "Gene importance", how, note(too_few))
    bars = go.Figure(go.Bar(x=list(importance.values()), y=list(importance), orientation="h"))
    bars.update_layout(
        height=80 + 28 * len(importance),
        yaxis={"autorange": "reversed", "title": {"text": "gene"}, "tickvals": list(importance)},
        xaxis={"title": {"text": f"importance over {len(trials)} trials (sums to 1)"}},
        margin={"l": 140},
    )
    return section(
        "importance", "Gene importance", how, figure(bars) + _slices(run, trials, importance)
    )


def _slices(run: Run, trials: pd.DataFrame, importance: dict[str, float]) -> str:
    """The objective against each of the most important genes: choices as boxes in the
    space's order, whole numbers ticked as whole numbers."""
    first = run.objectives[0]
    top = list(importance)[:SLICE_GENES]
    slices = make_subplots(rows=1, cols=len(top), subplot_titles=top, shared_yaxes=True)
    for column, gene in enumerate(top, start=1):
        x, y = trials[f"gene.{gene}"], trials[first.metric]
        domain = run.space.genes[gene]
        if domain.choice is not None:
            labels = [MISSING if is_missing(v) else format_value(v) for v in x]
            order = [format_value(v) for v in domain.values()]
            order += sorted(set(labels) - set(order))
            slices.add_trace(go.Box(x=labels, y=y, name=gene, boxpoints="all"), 1, column)
            slices.update_xaxes(categoryorder="array", categoryarray=order, row=1, col=column)
            continue
        slices.add_trace(go.Scatter(x=x, y=y, mode="markers", name=gene), 1, column)
        if domain.log:
            slices.update_xaxes(type="log", row=1, col=column)
        elif domain.kind == "int":
            ticks = round_ticks([*x, *domain.bounds], whole=True)
            slices.update_xaxes(**ticks.axis(pad=0.5), row=1, col=column)
    slices.update_layout(height=380, showlegend=False)
    slices.update_yaxes(title_text=axis_title(first), row=1, col=1)
    return figure(slices)
