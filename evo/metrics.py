"""What a trial measures, in one registry: each metric's name, its natural direction and
its unit. A trial reports its metrics by these names (`llm.trial.TrialResult.metrics`),
storage keeps each as a row of the trial and a column of its frame, a search space may
optimise any that is an objective, and every "which value is better" question is
answered here: a new metric is measured in `llm` and described here, nowhere else.

Beside the metrics, where a trial stands in the search (`TrialStatus`). Nothing here
imports torch, so that reading a results database needs none.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["min", "max"]
# How a metric follows the training budget, for predicting it at a target beyond the top
# rung (evo.schedule.forecast): "loss", a loss that falls towards a floor as a power law
# of the budget, extrapolated as it is; "log", the exp of one (perplexity), extrapolated
# through its log. A metric with none (throughput, size, accuracy) is not extrapolated.
Extrapolation = Literal["loss", "log"]

__all__ = [
    "EVAL_TOKENS",
    "METRICS",
    "OBJECTIVE_METRICS",
    "RESULT_STATUSES",
    "Direction",
    "Extrapolation",
    "Metric",
    "TrialStatus",
    "best",
    "better",
    "cost_sign",
]


class TrialStatus(str, enum.Enum):
    """Where a trial stands in the search: the values the results database stores.

    `llm.trial.run_trial` ends a trial DONE, DIVERGED, INVALID or FAILED (its
    `TrialEnd`, with the same words). The search adds the rest of its life: QUEUED and
    RUNNING before a result, TIMEOUT when it was cancelled, RETRIED when its worker was
    lost and another attempt followed, and INTERRUPTED when the search stopped while it
    ran (a resumed search runs it again).
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DIVERGED = "diverged"
    INVALID = "invalid"
    FAILED = "failed"
    TIMEOUT = "timeout"
    RETRIED = "retried"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_result(self) -> bool:
        """Whether the trial ended with an outcome the search counts (success or failure)."""
        return self in RESULT_STATUSES

    @property
    def is_failure(self) -> bool:
        return self in RESULT_STATUSES and self is not TrialStatus.DONE

    @property
    def is_active(self) -> bool:
        return self in (TrialStatus.QUEUED, TrialStatus.RUNNING)


RESULT_STATUSES = frozenset(
    {
        TrialStatus.DONE,
        TrialStatus.DIVERGED,
        TrialStatus.INVALID,
        TrialStatus.FAILED,
        TrialStatus.TIMEOUT,
    }
)


@dataclass(frozen=True)
class Metric:
    name: str  # a key of llm.trial.TrialResult.metrics
    direction: Direction  # which way is better when it is an objective
    unit: str
    description: str
    integer: bool = False
    objective: bool = True  # whether a search may optimise it
    gpu_only: bool = False  # measured only when a trial trains on a GPU; else None
    extrapolation: Extrapolation | None = None  # see Extrapolation


METRICS: dict[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric(
            "bits_per_byte",
            "min",
            "bits/byte",
            "validation loss in bits per UTF-8 byte of text, comparable across tokenizers",
            extrapolation="loss",
        ),
        Metric(
            "perplexity", "min", "", "exp of the validation loss per token", extrapolation="log"
        ),
        Metric(
            "val_loss",
            "min",
            "nats/token",
            "validation cross-entropy per token",
            extrapolation="loss",
        ),
        Metric("accuracy", "max", "", "share of validation tokens predicted exactly"),
        Metric("train_tokens_per_s", "max", "tokens/s", "training throughput (median step)"),
        Metric("decode_tokens_per_s", "max", "tokens/s", "cached greedy decoding throughput"),
        Metric("params", "min", "parameters", "all parameters", integer=True),
        Metric(
            "params_non_embedding",
            "min",
            "parameters",
            "parameters outside the embeddings",
            integer=True,
        ),
        Metric(
            "flops_per_token",
            "min",
            "FLOPs",
            "training FLOPs per token, forward and backward (analytic)",
            integer=True,
        ),
        Metric(
            "peak_memory_bytes",
            "min",
            "bytes",
            "peak GPU memory while training (the CUDA allocator's); not measured on a CPU",
            integer=True,
            gpu_only=True,
        ),
        Metric("wall_seconds", "min", "s", "the trial's wall-clock time"),
        Metric(
            "steps",
            "min",
            "steps",
            "optimizer steps the trial ran (a continued trial counts its own)",
            integer=True,
            objective=False,
        ),
        Metric(
            "tokens",
            "min",
            "tokens",
            "training tokens the trial ran (a continued trial counts its own)",
            integer=True,
            objective=False,
        ),
    )
}

OBJECTIVE_METRICS = tuple(name for name, metric in METRICS.items() if metric.objective)

# A promotion stores the metrics above that its run measured (`tokens` and `steps` are
# what it trained) and, under this name, how many validation tokens it was scored on.
EVAL_TOKENS = "eval_tokens"


def cost_sign(direction: Direction) -> float:
    """+1 for a direction to minimise, -1 to maximise: sign × value is a cost, lower better."""
    return 1.0 if direction == "min" else -1.0


def better(direction: Direction, a: float, b: float) -> bool:
    """Whether `a` is strictly better than `b`."""
    return cost_sign(direction) * a < cost_sign(direction) * b


def best(direction: Direction, values: Iterable[float]) -> float:
    """The best of the finite `values`; NaN when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return math.nan
    return min(finite) if direction == "min" else max(finite)


def metric_value(metrics: Mapping[str, Any] | None, name: str) -> float | None:
    """A stored record's measured `name` as a float (an integer metric's too); None if
    the record did not measure it."""
    value = (metrics or {}).get(name)
    return None if value is None else float(value)
