"""The dashboard's JSON for scripts: each run's summary (`/api/runs`), what a run's page
shows (`/api/runs/NAME`) and its trials (`/api/runs/NAME/trials`). Numbers are numbers
(a budget spent is its amount and its limit, not a sentence), counts and integer genes
and metrics are integers, moments are ISO 8601 in UTC, and a missing value is null.
Rungs count from 0, as in the database and `evo export` (the pages count from 1)."""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from datetime import datetime
from typing import Any

import pandas as pd

from evo.describe import run_space
from evo.generations import generations_complete
from evo.metrics import METRICS
from evo.space import Objective, SearchSpace
from evo.storage import RunInfo, Storage, TrialSummary
from evo.summary import (
    ACTIVE,
    SUCCESS,
    ForecastSummary,
    Trials,
    counted,
    forecast_summary,
    pareto_front,
    rung_rows,
    stalled,
    worker_time,
)
from evo.validate import target_seed_noise, validation_report

# Columns of Storage.trials_frame that count or name something: integers.
_COUNT_COLUMNS = ("trial_id", "generation", "rung", "decision", "attempt", "genome_id", "recorded")


def run_version(info: RunInfo, trials: Trials) -> str:
    """Changes whenever the run does: a trial added, started or ended, or the run's status."""
    statuses = Counter(t.status for t in trials)
    counts = ",".join(f"{status}:{count}" for status, count in sorted(statuses.items()))
    last = max((t.recorded for t in trials if t.recorded is not None), default=None)
    return digest(
        f"{info.updated_at.isoformat()}|{len(trials)}|{counts}|{last}|{info.shown_status}"
    )


def digest(text: str) -> str:
    """A version, short and plain enough for an address."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def run_summary(storage: Storage, info: RunInfo, trials: Trials) -> dict[str, Any]:
    """What the runs list shows of a run (`trials`: `Storage.trial_summaries`): its status,
    trials, budget spent, and the best value of its first objective where scores are
    comparable and count (at the top rung, stalled trials left out)."""
    space = run_space(info)
    objective = space.search.objectives[0]
    finished = _finished(trials, info, space)
    best = objective.best(t.metric(objective.metric) for t in finished if t.status == SUCCESS)
    spent = storage.spent(info.name)
    whole = {"steps": True, "tokens": True, "worker_seconds": False, "trials": True}
    return {
        "name": info.name,
        "status": info.shown_status,
        "mode": space.search.mode,
        "trials": len(trials),
        "active": sum(t.status in ACTIVE for t in trials),
        "objective": objective.metric,
        "best": json_value(best),
        "spent": {
            limit: {
                "spent": json_value(spent.of(limit), integer=whole[limit]),
                "limit": json_value(value, integer=whole[limit]),
            }
            for limit, value in space.search.budget.limits().items()
        },
        "created": json_value(info.created_at),
        "updated": json_value(info.updated_at),
        "version": run_version(info, trials),
    }


def run_detail(storage: Storage, info: RunInfo, trials: Trials) -> dict[str, Any]:
    """What the run's page shows, as numbers (`trials`: `Storage.trial_summaries`): the
    summary, the rungs, the trials by status, the workers' time, the best trial of each
    objective, and the forecast of a target beyond the top rung (null when the run makes
    none)."""
    space = run_space(info)
    finished = _finished(trials, info, space)
    workers = worker_time(trials, storage.run_sessions(info.name))
    objectives = space.search.objectives
    bests = {o.metric: _best(storage, info, finished, o, space) for o in objectives}
    detail = run_summary(storage, info, trials) | {
        "seed": info.seed,
        "target": _budget(space.target_budget()),
        "rungs": [
            {
                "rung": row.rung,
                "budget": _budget(row.budget),
                "trials": row.trials,
                "done": row.done,
                "failed": row.failed,
                "active": row.active,
                "advanced": row.advanced,
            }
            for row in rung_rows(trials, space)
        ],
        "statuses": dict(Counter(t.status for t in trials).most_common()),
        "stalled": len(stalled(trials, info.unigram_bits_per_byte)),
        "unigram_bits_per_byte": info.unigram_bits_per_byte,
        "workers": {
            "available_seconds": workers.available,
            "busy_seconds": workers.busy,
            "utilization": workers.utilization,
        },
        "objectives": [
            {
                "metric": objective.metric,
                "direction": objective.direction,
                "best": bests[objective.metric],
            }
            for objective in objectives
        ],
        "forecast": _forecast(storage, info, trials, space),
    }
    if space.search.mode == "generational":
        detail["generations_complete"] = generations_complete(info)
    return detail


def trial_records(frame: pd.DataFrame, space: SearchSpace) -> list[dict[str, Any]]:
    """The trials as `Storage.trials_frame` has them (the columns of `evo export`), one
    JSON object each."""
    integers = _integer_columns(frame, space)
    return [
        {key: json_value(value, integer=key in integers) for key, value in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def json_value(value: Any, integer: bool = False) -> Any:
    """`value` as JSON has it: NaN and NaT are null, a moment ISO 8601, a numpy scalar a
    number, and with `integer` a whole float an int."""
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, datetime):  # a pandas Timestamp too
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if integer and value.is_integer():
            return int(value)
    return value


def _finished(trials: Trials, info: RunInfo, space: SearchSpace) -> list[TrialSummary]:
    """The trials at the top rung that did not stall: the scores that count."""
    return counted(trials, space, stalled(trials, info.unigram_bits_per_byte))


def _best(
    storage: Storage,
    info: RunInfo,
    finished: list[TrialSummary],
    objective: Objective,
    space: SearchSpace,
) -> dict[str, Any] | None:
    """The best trial by `objective` among `finished` (none: every trial at the top rung
    failed or stalled): where it is, its objectives and its genes."""
    front = pareto_front(finished, [objective])
    if not front:
        return None
    best = front[0]
    integer = {name for name, metric in METRICS.items() if metric.integer}
    return {
        "trial_id": best.trial_id,
        "genome_id": best.genome_id,
        "rung": best.rung,
        **{
            o.metric: json_value(best.metric(o.metric), integer=o.metric in integer)
            for o in space.search.objectives
        },
        "genes": storage.genomes(info.name, [best.genome_id])[best.genome_id],
    }


def _forecast(
    storage: Storage, info: RunInfo, trials: Trials, space: SearchSpace
) -> dict[str, Any] | None:
    """The forecast as the run page's "Predictions at the target" shows it: the fit, and
    every predicted genome in the search's order (the first is the pick), with its rung
    scores, its prediction and interval (with `evo validate`'s seed spread, where the
    run has one)."""
    forecast = storage.forecast(info.name)
    if forecast is None:
        return None
    noise = target_seed_noise(validation_report(storage, info.name, space), forecast)
    shown = forecast_summary(trials, space, forecast, noise)
    return None if shown is None else _forecast_json(shown)


def _forecast_json(shown: ForecastSummary) -> dict[str, Any]:
    return {
        "metric": shown.metric,
        "target": _budget(shown.budget),
        "beyond": shown.beyond,
        "level": shown.level,
        "alpha": shown.alpha,
        "law_error": shown.law_error,
        "seed_noise": shown.noise,
        "noise_source": shown.noise_source,
        "check": None
        if shown.check is None
        else {key: json_value(value) for key, value in shown.check.items()},
        "recorded": shown.recorded,
        "genomes": [
            {
                "genome_id": g.genome_id,
                "scores": [json_value(g.scores.get(rung)) for rung in range(max(g.scores) + 1)],
                "predicted": json_value(g.mean),
                "low": json_value(g.low),
                "high": json_value(g.high),
            }
            for g in shown.genomes
        ],
    }


def _budget(budget: dict[str, float] | None) -> dict[str, Any] | None:
    if budget is None:
        return None
    return {key: json_value(value, integer=key != "max_seconds") for key, value in budget.items()}


def _integer_columns(frame: pd.DataFrame, space: SearchSpace) -> set[str]:
    """The frame's columns whose values are whole numbers: counts, integer metrics (also
    before adapting), and genes whose every value is an integer."""
    integer_metrics = {name for name, metric in METRICS.items() if metric.integer}
    genes = {
        f"gene.{name}"
        for name, domain in space.genes.items()
        if domain.kind == "int"
        or (domain.kind == "choice" and all(isinstance(v, int) for v in domain.values()))
    }
    return {
        *_COUNT_COLUMNS,
        *integer_metrics,
        *(f"pretrain.{name}" for name in integer_metrics),
        *genes,
    } & set(frame.columns)
