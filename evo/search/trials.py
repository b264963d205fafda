"""What both search loops share about a trial: the job that trains a genome at a rung,
its seed, and the objective values its outcome gives."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

from evo.checkpoints import CheckpointStore
from evo.executor import TrialJob
from evo.metrics import TrialStatus
from evo.space import SearchSpace
from evo.storage import TrialRecord, genome_hash
from llm.trial import TrialResult


@dataclass(frozen=True)
class SearchSummary:
    name: str
    trials: int  # trials run by this invocation (reused results not counted)
    best: dict[str, float]  # best value of each objective, at the top rung
    detail: str  # how far the search went, in words


def trial_seed(run_seed: int, genes: dict[str, Any]) -> int:
    """A genome's seed: the same in every trial of it, at every rung."""
    digest = hashlib.sha256(f"{run_seed}:{genome_hash(genes)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def make_job(
    space: SearchSpace,
    vocab_size: int,
    genome_id: int,
    genes: dict[str, Any],
    rung: int = 0,
    resume: str | None = None,
    checkpoints: CheckpointStore | None = None,
) -> TrialJob:
    """The job that trains `genes` to `rung`'s budget (continuing `resume`, the stable
    checkpoint it left at the rung below in `checkpoints`, when given). With a store, a
    trial below the top rung publishes its stable checkpoint there for the next rung."""
    budgets = space.rung_budgets()
    return TrialJob(
        genome_id=genome_id,
        model=space.model_config(genes, vocab_size),
        train=space.train_config(genes, budgets[rung]),
        seed=trial_seed(space.search.seed, genes),
        adapt_train=space.adapt_train_config(genes),
        lora_rank=space.lora_rank(genes),
        quantize=space.adapt_quantize(),
        rung=rung,
        resume=resume,
        keep_stable=checkpoints is not None and rung < len(budgets) - 1,
        checkpoints=checkpoints,
    )


def objective_values(
    space: SearchSpace, status: TrialStatus, result: TrialResult | TrialRecord
) -> tuple[float, ...] | None:
    """The outcome's value of each objective; None when the trial failed or lacks one."""
    if status is not TrialStatus.DONE:
        return None
    values = [result.metric(objective.metric) for objective in space.search.objectives]
    if any(value is None or not math.isfinite(value) for value in values):
        return None
    return tuple(float(value) for value in values if value is not None)
