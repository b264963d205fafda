"""Validation: does the search's ranking hold when its best genomes are trained for the
budget that matters, with other seeds?

`evo validate` takes a run's best genomes in the search's own order (the highest rung
each reached, then its first objective there: successive halving's ranking), retrains
each at the validation budget (the space's target by default) with fresh seeds, on the
same executor and data as the search's trials, and stores every result as a validation
of the run. `validation_report` then puts the two rankings side by side: Spearman ρ and
Kendall τ between them, and the noise floor — the seed-to-seed spread of one genome
beside the gaps between neighbouring genomes. A gap well under the spread is a coin toss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evo.metrics import TrialStatus
from evo.space import SearchSpace
from evo.storage import Storage, budget_key, genome_hash
from llm.errors import UserError

if TYPE_CHECKING:  # the executor brings torch, which `evo status` does without
    from evo.executor import Executor, TrialJob, TrialOutcome

DEFAULT_TOP = 8
DEFAULT_SEEDS = 2
UNTARGETED_FACTOR = 10  # a space without a target is validated at 10 × its trial budget


@dataclass(frozen=True)
class Candidate:
    """A genome as the search ranked it."""

    genome_id: int
    genes: dict[str, Any]
    rung: int  # the highest rung it reached with a success
    value: float  # its first objective there
    rank: int  # 1 is the search's best


@dataclass(frozen=True)
class ValidatedGenome:
    candidate: Candidate
    values: list[float]  # the first objective, one per successful seed
    mean: float
    spread: float | None  # standard deviation over seeds; None with one seed
    rank: int  # 1 is the best validated mean


@dataclass(frozen=True)
class ValidationReport:
    metric: str
    budget: dict[str, float]
    genomes: list[ValidatedGenome]  # in the search's order
    spearman: float | None  # None with fewer than three genomes
    kendall: float | None
    noise: float | None  # pooled seed-to-seed standard deviation
    gap: float | None  # median gap between neighbouring validated means
    pending: int  # validations not finished (interrupted or never run)


def search_ranking(storage: Storage, run: str, space: SearchSpace) -> list[Candidate]:
    """Every genome with a success, the search's best first."""
    best: dict[int, tuple[int, float]] = {}
    objective = space.search.objectives[0]
    for trial in storage.trials(run):
        value = trial.metric(objective.metric)
        if trial.status is not TrialStatus.DONE or value is None or not math.isfinite(value):
            continue
        key = (trial.rung, -objective.sign * value)
        if trial.genome_id not in best or key > best[trial.genome_id]:
            best[trial.genome_id] = key
    genomes = storage.genomes(run)
    order = sorted(best, key=lambda g: best[g], reverse=True)
    return [
        Candidate(g, genomes[g], best[g][0], -objective.sign * best[g][1], rank)
        for rank, g in enumerate(order, start=1)
    ]


def validation_budget(space: SearchSpace, asked: dict[str, float] | None) -> dict[str, float]:
    """The budget asked for, else the space's target, else ten times its trial budget."""
    if asked:
        return asked
    target = space.target_budget()
    if target is not None:
        return target
    return {key: UNTARGETED_FACTOR * value for key, value in space.trial.budget().items()}


def validation_seed(space: SearchSpace, genes: dict[str, Any], index: int) -> int:
    """The seed of a genome's `index`-th validation: never its search seed."""
    text = f"{space.search.seed}:{genome_hash(genes)}:validate:{index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


class _Recorder:
    """Stores each validation as it starts and ends (a TrialObserver)."""

    def __init__(
        self,
        storage: Storage,
        run: str,
        space: SearchSpace,
        budget: dict[str, float],
        say: Callable[[str], None],
        total: int,
    ) -> None:
        self.storage, self.run, self.budget, self.say = storage, run, budget, say
        self.metric = space.search.objectives[0].metric
        self.ids: dict[tuple[int, int], int] = {}
        self.total, self.done = total, 0

    def started(self, job: TrialJob, attempt: int) -> None:
        self.ids[(job.genome_id, job.seed)] = self.storage.start_validation(
            self.run, job.genome_id, self.budget, job.seed
        )

    def retrying(self, job: TrialJob, attempt: int, error: str) -> None:
        """A lost worker's retry continues the same validation."""

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        result = outcome.result
        self.storage.finish_validation(self.ids[(job.genome_id, job.seed)], outcome)
        self.done += 1
        value = result.metric(self.metric)
        shown = f"{self.metric} {value:.4g}" if value is not None else f"{outcome.status}"
        self.say(
            f"validated genome {job.genome_id} with seed {job.seed}: {shown} "
            f"({self.done}/{self.total}, {result.metrics['wall_seconds']:.0f} s)"
        )


def validation_jobs(
    storage: Storage,
    run: str,
    space: SearchSpace,
    vocab_size: int,
    *,
    top: int,
    seeds: int,
    budget: dict[str, float],
) -> list[TrialJob]:
    """The jobs still to run: the search's `top` genomes × `seeds` seeds at `budget`,
    less those already validated with a result."""
    from evo.executor import TrialJob

    if top < 1 or seeds < 1:
        raise UserError("--top and --seeds must be at least 1")
    candidates = search_ranking(storage, run, space)[:top]
    if not candidates:
        raise UserError(f"run {run!r} has no successful trial to validate yet")
    key = budget_key(budget)
    done = {
        (v.genome_id, v.seed)
        for v in storage.validations(run)
        if v.status.is_result and budget_key(v.budget) == key
    }
    return [
        TrialJob(
            genome_id=c.genome_id,
            model=space.model_config(c.genes, vocab_size),
            train=space.train_config(c.genes, budget),
            seed=seed,
            adapt_train=space.adapt_train_config(c.genes),
            lora_rank=space.lora_rank(c.genes),
            quantize=space.adapt_quantize(),
        )
        for c in candidates
        for seed in (validation_seed(space, c.genes, i) for i in range(seeds))
        if (c.genome_id, seed) not in done
    ]


def validate(
    storage: Storage,
    run: str,
    space: SearchSpace,
    executor: Executor,
    jobs: Sequence[TrialJob],
    budget: dict[str, float],
    say: Callable[[str], None] = lambda line: None,
) -> None:
    """Run the validation jobs on `executor` (its data already loaded), storing each and
    telling `say` about it. Interrupted, it leaves the unfinished ones `interrupted`, to
    be run again."""
    storage.interrupt_validations(run)  # what a killed `evo validate` left running
    try:
        executor.run(jobs, _Recorder(storage, run, space, budget, say, len(jobs)))
    finally:
        storage.interrupt_validations(run)


def validation_report(
    storage: Storage,
    run: str,
    space: SearchSpace,
    budget: dict[str, float] | None = None,
) -> ValidationReport | None:
    """The search's ranking beside the validated one, at `budget` (default: the budget of
    the latest validation); None when the run has no validation."""
    records = storage.validations(run)
    if not records:
        return None
    key = budget_key(budget) if budget else budget_key(records[-1].budget)
    records = [v for v in records if budget_key(v.budget) == key]
    objective = space.search.objectives[0]
    values: dict[int, list[float]] = {}
    for record in records:
        value = record.metric(objective.metric)
        if record.status is TrialStatus.DONE and value is not None and math.isfinite(value):
            values.setdefault(record.genome_id, []).append(value)
    ranking = [c for c in search_ranking(storage, run, space) if c.genome_id in values]
    means = {c.genome_id: statistics.fmean(values[c.genome_id]) for c in ranking}
    by_mean = sorted(means, key=lambda g: objective.sign * means[g])
    genomes = [
        ValidatedGenome(
            candidate=dataclasses.replace(c, rank=i),  # ranked among the validated only
            values=values[c.genome_id],
            mean=means[c.genome_id],
            spread=statistics.stdev(values[c.genome_id]) if len(values[c.genome_id]) > 1 else None,
            rank=by_mean.index(c.genome_id) + 1,
        )
        for i, c in enumerate(ranking, start=1)
    ]
    spearman, kendall = rank_agreement(genomes)
    return ValidationReport(
        metric=objective.metric,
        budget=records[0].budget,
        genomes=genomes,
        spearman=spearman,
        kendall=kendall,
        noise=pooled_spread(genomes),
        gap=median_gap(genomes),
        pending=sum(1 for v in records if not v.status.is_result),
    )


def rank_agreement(genomes: Sequence[ValidatedGenome]) -> tuple[float | None, float | None]:
    """Spearman ρ and Kendall τ-b between the search's ranks and the validated ones."""
    if len(genomes) < 3:
        return None, None
    from scipy import stats  # imported here: `evo status` should not wait for scipy

    search = [g.candidate.rank for g in genomes]
    validated = [g.rank for g in genomes]
    return float(stats.spearmanr(search, validated)[0]), float(
        stats.kendalltau(search, validated)[0]
    )


def pooled_spread(genomes: Sequence[ValidatedGenome]) -> float | None:
    """The seed-to-seed standard deviation, pooled over genomes with several seeds."""
    variances = [(len(g.values) - 1, g.spread**2) for g in genomes if g.spread is not None]
    dof = sum(n for n, _ in variances)
    return math.sqrt(sum(n * v for n, v in variances) / dof) if dof else None


def median_gap(genomes: Sequence[ValidatedGenome]) -> float | None:
    """The median difference between neighbouring validated means."""
    means = sorted(g.mean for g in genomes)
    gaps = [b - a for a, b in itertools.pairwise(means)]
    return statistics.median(gaps) if gaps else None
