"""How a trial, a metric and a gene read on the page: hover texts, axis titles, values
with their units, and why a value is missing."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from evo.metrics import METRICS
from evo.report.markup import Html, format_value, is_missing, link
from evo.report.run import Run
from evo.space import Objective

NOT_MEASURED = "n/a (CPU)"  # a GPU-only metric of a trial that trained elsewhere


def trial_cell(run: Run, trial_id: int) -> Html | int:
    """A trial's id in a table: a link to its page where the run's pages have them."""
    return link(run.trial_url.format(trial_id), trial_id) if run.trial_url else trial_id


def gene_text(name: str, value: Any) -> str:
    return f"{name}={format_value(value)}"


def gene_lines(row: pd.Series) -> list[str]:
    """`name=value` for each gene the trial's genome has."""
    return [
        gene_text(key[5:], value)
        for key, value in row.items()
        if str(key).startswith("gene.") and not is_missing(value)
    ]


def gene_columns(run: Run) -> list[str]:
    """The frame's gene columns in the space's order, then genes the space no longer has."""
    columns = [f"gene.{n}" for n in run.space.gene_names if f"gene.{n}" in run.frame]
    return columns + [c for c in run.frame if c.startswith("gene.") and c not in columns]


def hover_texts(frame: pd.DataFrame) -> list[str]:
    texts = []
    for _, row in frame.iterrows():
        when = f"rung {row['rung'] + 1}"
        if not is_missing(row["generation"]):
            when = f"generation {row['generation']:.0f}"
        lines = [f"trial {row['trial_id']} ({when})"]
        lines += gene_lines(row)
        lines += [f"{m}: {metric_text(row, m)}" for m in METRICS if _shown(row, m)]
        texts.append("<br>".join(html.escape(line) for line in lines))
    return texts


def _shown(row: pd.Series, metric: str) -> bool:
    """Whether a trial's hover text lists `metric`: when measured, or when it could not be
    (a GPU-only metric of a trial that trained elsewhere says so)."""
    return not is_missing(row[metric]) or metric_text(row, metric) == NOT_MEASURED


def metric_text(row: pd.Series, metric: str) -> str:
    """A trial's value of `metric`, or why it has none: a GPU-only metric is not measured
    for a trial that trained on another device."""
    device = row.get("device")
    elsewhere = not is_missing(device) and not str(device).startswith("cuda")
    if is_missing(row[metric]) and METRICS[metric].gpu_only and elsewhere:
        return NOT_MEASURED
    return format_value(row[metric])


def unit_title(metric: str) -> str:
    """The metric's name with its unit, where it has one."""
    unit = METRICS[metric].unit
    return f"{metric} ({unit})" if unit else metric


def axis_title(objective: Objective) -> str:
    """The objective's name and unit, and on a second line (one would not fit beside a
    short subplot) which way is better."""
    better = "lower" if objective.sign > 0 else "higher"
    return f"{unit_title(objective.metric)}<br>{better} is better"
