"""Promotion: train the best genome of a search properly, as a model directory that
`llm eval` and `llm generate` accept."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evo.driver import load_run_space
from evo.space import SearchSpace
from evo.storage import Storage, TrialRecord
from llm.config import RunConfig
from llm.errors import UserError
from llm.train import train_run


@dataclass(frozen=True)
class Budget:
    max_steps: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None

    def is_set(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))


DEFAULT_BUDGET = Budget(max_steps=2000)


def pick_trial(
    storage: Storage, run: str, space: SearchSpace, genome_id: int | None, objective: str | None
) -> TrialRecord:
    """The successful trial of `genome_id`, else the best by `objective` (default: the first)."""
    done = [t for t in storage.trials(run) if t.status == "done"]
    if genome_id is not None:
        for trial in done:
            if trial.genome_id == genome_id:
                return trial
        raise UserError(f"run {run!r} has no successful trial of genome {genome_id}")
    objectives = {o.metric: o.direction for o in space.search.objectives}
    metric = objective or space.search.objectives[0].metric
    if metric not in objectives:
        raise UserError(f"{metric!r} is not an objective of run {run!r}: {', '.join(objectives)}")
    scored = [t for t in done if t.metric(metric) is not None]
    if not scored:
        raise UserError(f"run {run!r} has no successful trial to promote yet")
    sign = 1.0 if objectives[metric] == "min" else -1.0
    return min(scored, key=lambda t: sign * (t.metric(metric) or 0.0))


def promotion_config(
    space: SearchSpace, genes: dict[str, Any], budget: Budget, corpus: str | None
) -> RunConfig:
    """The genome's model and training settings with a pretraining budget, on the search's
    corpus and tokenizer (or on `corpus`, with a tokenizer of the same kind trained for it)."""
    model = space.model_config(genes, vocab_size=None)  # the tokenizer sets it
    trial = space.train_config(genes)
    budget = budget if budget.is_set() else DEFAULT_BUDGET
    train = dataclasses.replace(
        trial,
        **dataclasses.asdict(budget),
        eval_interval=max(1, (budget.max_steps or 1000) // 10),
        checkpoint_interval=max(1, (budget.max_steps or 1000) // 5),
        threads=None,
        device="auto",
    )
    data = space.data_config()
    if corpus is not None:
        data = dataclasses.replace(data, corpus=corpus)
    return RunConfig(data=data, model=model, train=train)


def promote(
    storage: Storage,
    run: str,
    *,
    genome_id: int | None = None,
    objective: str | None = None,
    budget: Budget = Budget(),
    corpus: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
) -> Path:
    space = load_run_space(storage, run)
    trial = pick_trial(storage, run, space, genome_id, objective)
    genes = storage.genomes(run)[trial.genome_id]
    config = promotion_config(space, genes, budget, corpus)
    out_dir = Path(out) if out else Path("results") / run / f"promoted-genome-{trial.genome_id}"
    promotion = storage.record_promotion(run, trial.genome_id, str(out_dir), "running", None)
    try:
        outcome = train_run(config, out_dir, resume=resume)
    except BaseException:
        storage.update_promotion(promotion, "failed", None)
        raise
    metrics = None
    if outcome.final is not None:
        metrics = {**dataclasses.asdict(outcome.final), "steps": outcome.step}
    status = {"ok": "finished", "diverged": "diverged"}.get(outcome.status, outcome.status)
    if outcome.stop_reason == "interrupted":
        status = "interrupted"
    storage.update_promotion(promotion, status, metrics)
    return out_dir
