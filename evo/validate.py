"""Validation: does the search's ranking hold when its best genomes are trained for the
budget that matters, with other seeds?

`evo validate` takes a run's best genomes in the search's own order (the highest rung
each reached, then its first objective there: successive halving's ranking; with a
target beyond the top rung, the objective predicted at the target: `evo.summary.
search_order`), retrains each at the validation budget (the space's target by default)
with fresh seeds, on the same executor and data as the search's trials, and stores every
result as a validation of the run. `validation_report` then puts the two rankings side
by side: Spearman ρ and Kendall τ between them, and the noise floor — the seed-to-seed
spread of one genome beside the gaps between neighbouring genomes. A gap well under the
spread is a coin toss. At the target of a search that forecast it, the report also
checks the predictions against the validated scores (`PredictionCheck`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import math
import signal
import statistics
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from evo.metrics import METRICS, TrialStatus
from evo.schedule.forecast import shown_interval, to_loss
from evo.space import SearchSpace
from evo.storage import ForecastRecord, PredictionRecord, Storage, budget_key, genome_hash
from evo.summary import SearchScore, search_order
from llm.errors import UserError

if TYPE_CHECKING:  # the executor brings torch, which `evo status` does without
    from evo.executor import Executor, TrialJob, TrialOutcome
    from llm.trial import CurvePoint

DEFAULT_TOP = 8
DEFAULT_SEEDS = 2
# The most validation trials one `evo validate` runs (--top × --seeds): each trains a
# genome for the whole validation budget, and the jobs are made before the first starts.
MAX_VALIDATIONS = 1000
UNTARGETED_FACTOR = 10  # a space without a target is validated at 10 × its trial budget


@dataclass(frozen=True)
class Candidate:
    """A genome as the search ranked it."""

    genome_id: int
    genes: dict[str, Any]
    rung: int  # the highest rung it reached with a success
    value: float  # its first objective there
    rank: int  # 1 is the search's best
    predicted: PredictionRecord | None = None  # at the target, when the search forecast it


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
    check: PredictionCheck | None = None  # at the target the search forecast


@dataclass(frozen=True)
class PredictionCheck:
    """The search's predictions at its target against the scores validated there."""

    genomes: int  # validated genomes with a prediction
    kendall: float | None  # τ of the predicted against the validated means (None: < 3)
    spearman: float | None
    mae: float  # mean absolute error of the predicted against the validated means
    inside: float  # share of the validated scores (one per seed) inside the intervals
    level: float  # the intervals' coverage
    naive_kendall: float | None  # τ of the top-rung ranking against the validated means
    seed_noise: float | None  # `evo validate`'s spread on the law's scale, in the intervals

    def describe(self) -> str:
        """How the predictions fared, in a line, for status and report."""
        ranks = "Kendall τ needs three genomes"
        if self.kendall is not None and self.spearman is not None:
            ranks = f"Kendall τ {self.kendall:.2f}, Spearman ρ {self.spearman:.2f}"
            if self.naive_kendall is not None:
                ranks += f" (ranked by the top-rung score alone: τ {self.naive_kendall:.2f})"
        return (
            f"{ranks}; mean absolute error {self.mae:.3g}; {self.inside:.0%} of the validated "
            f"scores inside the {self.level:.0%} intervals ({self.genomes} genomes)"
        )


def search_ranking(storage: Storage, run: str, space: SearchSpace) -> list[Candidate]:
    """Every genome with a success, the search's best first (`evo.summary.search_order`:
    by rung, then by the first objective predicted at the target where the search
    forecast it, else measured)."""
    best: dict[int, tuple[int, float]] = {}
    objective = space.search.objectives[0]
    for trial in storage.trials(run):
        value = trial.metric(objective.metric)
        if trial.status is not TrialStatus.DONE or value is None or not math.isfinite(value):
            continue
        key = (trial.rung, -objective.sign * value)
        if trial.genome_id not in best or key > best[trial.genome_id]:
            best[trial.genome_id] = key
    scores = {g: SearchScore(-objective.sign * value, rung) for g, (rung, value) in best.items()}
    forecast = storage.forecast(run)
    predictions = forecast.predictions if forecast and forecast.metric == objective.metric else {}
    predicted = {g: p.mean for g, p in predictions.items()}
    genomes = storage.genomes(run)
    return [
        Candidate(g, genomes[g], scores[g].rung, scores[g].value, rank, predictions.get(g))
        for rank, g in enumerate(search_order(scores, objective, predicted), start=1)
    ]


def validation_budget(space: SearchSpace, asked: dict[str, float] | None) -> dict[str, float]:
    """The budget asked for, else the space's target, else ten times its trial budget."""
    if asked:
        return asked
    target = space.target_budget()
    if target is not None:
        return target
    return {key: UNTARGETED_FACTOR * value for key, value in space.trial.budget().items()}


def validation_timeout(space: SearchSpace, budget: dict[str, float]) -> float | None:
    """The time limit of a validation trial: the space's trial timeout, which is sized for
    its longest trial (the top rung), scaled by how many times longer this budget is (a
    4M-token validation of a search whose top rung is 444k tokens gets 9x the time)."""
    timeout, longest = space.trial.timeout_s, space.rung_budgets()[-1]
    ratios = [budget[unit] / longest[unit] for unit in budget if longest.get(unit)]
    if timeout is None or not ratios:
        return timeout
    return timeout * max(1.0, max(ratios))


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
        self.pressed: Callable[[], bool] = lambda: False  # Ctrl-C, set by `validate`

    def started(self, job: TrialJob, attempt: int) -> None:
        self.ids[(job.genome_id, job.seed)] = self.storage.start_validation(
            self.run, job.genome_id, self.budget, job.seed
        )

    def retrying(self, job: TrialJob, attempt: int, error: str) -> None:
        """A lost worker's retry continues the same validation."""

    def progress(self, job: TrialJob, points: list[CurvePoint]) -> None:
        """A validation stores no curve (its result is the score at the budget)."""

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
        if self.pressed():  # a Ctrl-C that Python dropped (see `_remembered_interrupts`)
            raise KeyboardInterrupt


def check_request(top: int, seeds: int) -> None:
    """Refuse a number of genomes or seeds that `evo validate` cannot run."""
    if top < 1 or seeds < 1:
        raise UserError("--top and --seeds must be at least 1")
    if top * seeds > MAX_VALIDATIONS:
        raise UserError(
            f"--top {top:,} × --seeds {seeds:,} asks for {top * seeds:,} validation trials, "
            f"more than the {MAX_VALIDATIONS:,} one `evo validate` runs (each trains for the "
            "whole validation budget); ask for fewer"
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
    genome_ids: Sequence[int] = (),
) -> list[TrialJob]:
    """The jobs still to run: the search's `top` genomes (or those of `genome_ids`) ×
    `seeds` seeds at `budget`, less those already validated with a result. A validation
    that timed out is run again: a time limit says nothing of the genome's score."""
    from evo.executor import TrialJob

    check_request(len(genome_ids) or top, seeds)
    candidates = chosen_candidates(storage, run, space, top, genome_ids)
    key = budget_key(budget)
    done = {
        (v.genome_id, v.seed)
        for v in storage.validations(run)
        if v.status.is_result
        and v.status is not TrialStatus.TIMEOUT
        and budget_key(v.budget) == key
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


def chosen_candidates(
    storage: Storage, run: str, space: SearchSpace, top: int, genome_ids: Sequence[int]
) -> list[Candidate]:
    """The search's best `top` genomes, or the genomes `genome_ids` names (each must have a
    success in the run), in the search's order."""
    ranking = search_ranking(storage, run, space)
    if not ranking:
        raise UserError(f"run {run!r} has no successful trial to validate yet")
    if not genome_ids:
        return ranking[:top]
    ranked = {c.genome_id for c in ranking}
    unknown = sorted(set(genome_ids) - ranked)
    if unknown:
        raise UserError(
            f"--genome {', '.join(map(str, unknown))}: no genome of run {run!r} with that id "
            "has a successful trial (`evo status` lists them)"
        )
    return [c for c in ranking if c.genome_id in set(genome_ids)]


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
    recorder = _Recorder(storage, run, space, budget, say, len(jobs))
    try:
        with _remembered_interrupts() as recorder.pressed:
            executor.run(jobs, recorder)
    finally:
        storage.interrupt_validations(run)


@contextlib.contextmanager
def _remembered_interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C raises KeyboardInterrupt as always, and is remembered too: one that lands
    while Python runs a finalizer (`__del__`, a weakref callback) is printed as ignored
    and dropped, so the validations check between trials whether it was pressed."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pressed: list[int] = []

    def interrupt(signum: int, frame: object) -> None:
        pressed.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield lambda: bool(pressed)
    finally:
        signal.signal(signal.SIGINT, previous)


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
    report = ValidationReport(
        metric=objective.metric,
        budget=records[0].budget,
        genomes=genomes,
        spearman=spearman,
        kendall=kendall,
        noise=pooled_spread(genomes),
        gap=median_gap(genomes),
        pending=sum(1 for v in records if not v.status.is_result),
    )
    forecast = storage.forecast(run)
    if forecast is None or budget_key(forecast.budget) != key:
        return report
    check = prediction_check(space, genomes, forecast, target_seed_noise(report, forecast))
    return dataclasses.replace(report, check=check)


def target_seed_noise(
    report: ValidationReport | None, forecast: ForecastRecord | None
) -> float | None:
    """`evo validate`'s seed-to-seed spread at the forecast's target, on the law's scale
    (perplexity's log): the seed noise the forecast's intervals show once it is measured.
    None without validations of the forecast metric at the target with several seeds."""
    if report is None or forecast is None or report.metric != forecast.metric:
        return None
    kind = METRICS[forecast.metric].extrapolation
    if kind is None or budget_key(report.budget) != budget_key(forecast.budget):
        return None
    return _pooled_std([[to_loss(kind, value) for value in g.values] for g in report.genomes])


def prediction_check(
    space: SearchSpace,
    genomes: Sequence[ValidatedGenome],
    forecast: ForecastRecord,
    seed_noise: float | None,
) -> PredictionCheck | None:
    """The forecast's predictions for the validated `genomes` (at its target) against their
    validated scores, beside the ranking by top-rung score alone; None when none of them
    has a prediction."""
    checked = [g for g in genomes if g.candidate.predicted is not None]
    if not checked:
        return None
    predicted = [g.candidate.predicted for g in checked if g.candidate.predicted is not None]
    intervals = [shown_interval(p, forecast, seed_noise) for p in predicted]
    inside = [
        low <= value <= high
        for g, (low, high) in zip(checked, intervals, strict=True)
        for value in g.values
    ]
    objective = space.search.objectives[0]
    scores = {
        g.candidate.genome_id: SearchScore(g.candidate.value, g.candidate.rung) for g in checked
    }
    naive = search_order(scores, objective, {})
    validated = [g.rank for g in checked]
    spearman, kendall = _agreement([g.candidate.rank for g in checked], validated)
    _, naive_kendall = _agreement([naive.index(g.candidate.genome_id) for g in checked], validated)
    return PredictionCheck(
        genomes=len(checked),
        kendall=kendall,
        spearman=spearman,
        mae=statistics.fmean(abs(p.mean - g.mean) for p, g in zip(predicted, checked, strict=True)),
        inside=statistics.fmean(inside),
        level=forecast.level,
        naive_kendall=naive_kendall,
        seed_noise=seed_noise,
    )


def rank_agreement(genomes: Sequence[ValidatedGenome]) -> tuple[float | None, float | None]:
    """Spearman ρ and Kendall τ-b between the search's ranks and the validated ones."""
    return _agreement([g.candidate.rank for g in genomes], [g.rank for g in genomes])


def _agreement(a: Sequence[float], b: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman ρ and Kendall τ-b between two rankings of the same genomes; None with fewer
    than three."""
    if len(a) < 3:
        return None, None
    from scipy import stats  # imported here: `evo status` should not wait for scipy

    return float(stats.spearmanr(a, b)[0]), float(stats.kendalltau(a, b)[0])


def pooled_spread(genomes: Sequence[ValidatedGenome]) -> float | None:
    """The seed-to-seed standard deviation, pooled over genomes with several seeds."""
    return _pooled_std([g.values for g in genomes])


def _pooled_std(groups: Sequence[Sequence[float]]) -> float | None:
    """The standard deviation within groups, pooled over those of two values or more."""
    variances = [(len(v) - 1, statistics.variance(v)) for v in groups if len(v) > 1]
    dof = sum(n for n, _ in variances)
    return math.sqrt(sum(n * v for n, v in variances) / dof) if dof else None


def median_gap(genomes: Sequence[ValidatedGenome]) -> float | None:
    """The median difference between neighbouring validated means."""
    means = sorted(g.mean for g in genomes)
    gaps = [b - a for a, b in itertools.pairwise(means)]
    return statistics.median(gaps) if gaps else None
