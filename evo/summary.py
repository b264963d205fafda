"""The numbers `evo status`, `evo report` and `evo dashboard` show, computed from a run's
trials as `Storage.trial_summaries` reads them: trials and advances per rung, the Pareto
front of the top rung, the anytime curve (the best value at the top rung against compute
spent), how busy the workers were, each genome's score in the search and the search's
order of the genomes (`search_order`, predicted at a target beyond the top rung:
`forecast_summary`), and which trials stalled. Plain Python over plain rows, without
pandas: `evo status` prints them for 10,000 trials in under a second
(bench/read_speed.py). The run's settings in words (its space, budgets, spending, the
target's passes over the data) are in `evo.describe`; how many generations a run has
completed is in `evo.generations`; the report draws these numbers (`evo.report`, which
also keeps the pandas frame its charts need)."""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from evo.metrics import TrialStatus
from evo.schedule.forecast import forecast_objective, shown_interval
from evo.space import Objective, SearchSpace
from evo.storage import ForecastRecord, SessionRecord, TrialSummary

# Trial statuses as the views count them.
SUCCESS = TrialStatus.DONE.value
FAILURES = tuple(status.value for status in TrialStatus if status.is_failure)
ACTIVE = tuple(status.value for status in TrialStatus if status.is_active)
LOST = (TrialStatus.RETRIED.value, TrialStatus.INTERRUPTED.value)  # to be run again
STALLED = "stalled"  # what a stalled trial is called where its status is shown
STALLED_RULE = (
    "A trial is stalled when it finished but its bits per byte is no better than (at or "
    "above) that of the best unigram model of the validation text, which predicts each "
    "token by its frequency there and ignores context: such a model learned nothing that "
    "counts beyond token frequencies."
)

Trials = Sequence[TrialSummary]


@dataclass(frozen=True)
class RungRow:
    rung: int  # 0-based
    budget: dict[str, float]
    trials: int  # decisions to train a genome to this rung
    done: int
    failed: int
    active: int  # queued or running now
    advanced: int  # genomes that went on from here to the next rung


class SearchScore(NamedTuple):
    """A genome's score in the search: its result at the highest rung it reached (a
    NamedTuple: `evo status` makes one per genome, 10,000 in a large run)."""

    value: float
    rung: int  # 0-based


def rung_rows(trials: Trials, space: SearchSpace) -> list[RungRow]:
    """One row per rung, from the latest attempt of each decision."""
    latest: dict[int | None, TrialSummary] = {}
    for trial in sorted(trials, key=lambda t: t.trial_id):
        latest[trial.decision] = trial
    budgets = space.rung_budgets()
    rows = []
    for rung, budget in enumerate(budgets):
        statuses = [t.status for t in latest.values() if t.rung == rung]
        above = {t.genome_id for t in latest.values() if t.rung == rung + 1}
        rows.append(
            RungRow(
                rung=rung,
                budget=budget,
                trials=len(statuses),
                done=statuses.count(SUCCESS),
                failed=sum(status in FAILURES for status in statuses),
                active=sum(status in ACTIVE for status in statuses),
                advanced=len(above) if rung + 1 < len(budgets) else 0,
            )
        )
    return rows


def top_rung(trials: Trials, space: SearchSpace) -> list[TrialSummary]:
    """The trials at the top rung: the scores that matter."""
    top = len(space.rung_budgets()) - 1
    return [t for t in trials if t.rung == top]


def counted(trials: Trials, space: SearchSpace, stuck: set[int]) -> list[TrialSummary]:
    """The trials at the top rung but the `stuck` ones (`stalled`): the scores that count."""
    return [t for t in top_rung(trials, space) if t.trial_id not in stuck]


def successful(
    trials: Iterable[TrialSummary], objectives: Sequence[Objective]
) -> list[TrialSummary]:
    """The trials that finished with a finite value of every objective."""
    return [
        t
        for t in trials
        if t.status == SUCCESS and all(_finite(t.metric(o.metric)) for o in objectives)
    ]


def _ranked(trials: Iterable[TrialSummary], objective: Objective) -> list[TrialSummary]:
    """The trials best first by the objective, those without a value last; ties keep their
    order."""

    def key(trial: TrialSummary) -> tuple[bool, float]:
        value = trial.metric(objective.metric)
        return (value is None, 0.0 if value is None else objective.sign * value)

    return sorted(trials, key=key)


def pareto_front(trials: Trials, objectives: Sequence[Objective]) -> list[TrialSummary]:
    """The successful trials that no other successful trial dominates, best first by the
    first objective.

    A trial dominates another when it is at least as good in every objective and better
    in one. Equal trials do not dominate each other, so ties stay on the front together.
    """
    finished = successful(trials, objectives)
    costs = {t.trial_id: tuple(o.sign * t.metrics[o.metric] for o in objectives) for t in finished}
    # In lexicographic order of the costs, a trial's dominators all come before it, and a
    # dominated trial's dominator is dominated by one on the front: so each trial need
    # only be compared with the front so far.
    front: list[tuple[float, ...]] = []
    on_front = set()
    for trial_id, cost in sorted(costs.items(), key=lambda item: item[1]):
        if not any(_dominates(other, cost) for other in front):
            front.append(cost)
            on_front.add(trial_id)
    return _ranked([t for t in finished if t.trial_id in on_front], objectives[0])


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and a != b


def stalled(trials: Iterable[TrialSummary], baseline: float | None) -> set[int]:
    """The ids of the trials that stalled (STALLED_RULE), given the run's unigram baseline
    in bits per byte (`RunInfo.unigram_bits_per_byte`; a run without one judges none).
    Stalled trials stay successes for the search; reports list them apart and leave
    them out of the charts, whose axes they would stretch."""
    if baseline is None:
        return set()
    return {t.trial_id for t in trials if t.status == SUCCESS and _at_least(t, baseline)}


def _at_least(trial: TrialSummary, baseline: float) -> bool:
    value = trial.metric("bits_per_byte")
    return value is not None and value >= baseline


def search_scores(trials: Trials, objective: Objective) -> dict[int, SearchScore]:
    """Each scored genome's value of `objective` in the search, from its successful trial
    at the highest rung it reached (the trial `evo promote --genome` starts from)."""
    best: dict[int, TrialSummary] = {}
    for trial in trials:
        if trial.status != SUCCESS or trial.metric(objective.metric) is None:
            continue
        held = best.get(trial.genome_id)
        if held is None or (trial.rung, trial.trial_id) > (held.rung, held.trial_id):
            best[trial.genome_id] = trial
    return {
        genome: SearchScore(float(t.metrics[objective.metric]), t.rung)
        for genome, t in sorted(best.items(), key=lambda item: (item[1].rung, item[1].trial_id))
    }


def search_order(
    scores: Mapping[int, SearchScore], objective: Objective, predicted: Mapping[int, float]
) -> list[int]:
    """The genomes of `scores` best first, as the search ranks them: the one rule for
    what `evo status` calls best, what `evo promote` promotes without validations and
    what `evo validate` retrains first. The highest rung reached first; within a rung, by
    the score `predicted` at the target (a target beyond the top rung: the genome's
    prediction, `evo.schedule.forecast`), else by the score measured there (a genome
    without a prediction after those with one). Ties keep the order of `scores`."""

    def key(genome: int) -> tuple[int, bool, float]:
        score, value = scores[genome], predicted.get(genome)
        shown = score.value if value is None else value
        return (-score.rung, value is None, objective.sign * shown)

    return sorted(scores, key=key)


@dataclass(frozen=True)
class GenomeForecast:
    """A genome's measured rung scores beside its predicted score at the target."""

    genome_id: int
    scores: dict[int, float]  # the objective at each rung it reached (0-based), as measured
    mean: float  # predicted at the target
    low: float  # the interval at the forecast's level
    high: float


@dataclass(frozen=True)
class ForecastSummary:
    """A run's forecast of its target, as shown: the fit, and the genomes in the search's
    order (`search_order`), each with its rung scores and prediction."""

    metric: str
    budget: dict[str, float]  # the target
    beyond: float  # the target over the top rung's budget
    level: float
    alpha: float
    law_error: float  # κ
    noise: float  # the seed noise in the intervals, on the law's scale
    noise_source: str  # "validated" (`evo validate`'s seed spread), "residuals" or "assumed"
    check: dict[str, float | None] | None  # the law tried on the run (extrapolate.Check)
    recorded: int | None  # fitted after this result
    genomes: list[GenomeForecast]

    def describe(self) -> str:
        """The fit in a line, for status and report: its exponent, the law's error, the
        seed noise and where it came from, and how the law did on the run itself."""
        noise = {
            "validated": "measured by evo validate",
            "residuals": "estimated from the rung scores",
            "assumed": "assumed (1% of the scores)",
        }[self.noise_source]
        text = (
            f"L(D) = E + A·D^(−α) with α {self.alpha:.3g} shared by the genomes; law error κ "
            f"{self.law_error:.2f} of a predicted drop; seed noise {self.noise:.3g} ({noise})"
        )
        check = self.check
        if check and check.get("tau") is not None and check.get("tau_naive") is not None:
            text += (
                f"; tried one rung ahead on {check['genomes']} genomes: Kendall τ "
                f"{check['tau']:.2f}, against {check['tau_naive']:.2f} for the rung below's "
                "scores"
            )
        return text


def forecast_summary(
    trials: Trials,
    space: SearchSpace,
    forecast: ForecastRecord | None,
    seed_noise: float | None = None,
) -> ForecastSummary | None:
    """The run's forecast (`Storage.forecast`) with each scored genome's rung scores (from
    `Storage.trial_summaries`), in the search's order; None when the run forecasts
    nothing. `seed_noise`: `evo validate`'s seed spread at the target on the law's scale
    (`evo.validate.target_seed_noise`), which replaces the fit's estimate in the
    intervals. What `evo status`, the report and the dashboard show:

        forecast_summary(storage.trial_summaries(run), space, storage.forecast(run),
                         target_seed_noise(validation_report(storage, run, space), forecast))
    """
    objective = forecast_objective(space)
    if forecast is None or objective is None or forecast.metric != objective.metric:
        return None
    measured: dict[int, dict[int, float]] = {}
    for trial in trials:
        value = trial.metric(objective.metric)
        if trial.status == SUCCESS and value is not None:
            measured.setdefault(trial.genome_id, {})[trial.rung] = value
    predicted = {g: p.mean for g, p in forecast.predictions.items()}
    genomes = []
    for genome in search_order(search_scores(trials, objective), objective, predicted):
        prediction = forecast.predictions.get(genome)
        if prediction is None:
            continue
        low, high = shown_interval(prediction, forecast, seed_noise)
        genomes.append(GenomeForecast(genome, measured[genome], prediction.mean, low, high))
    unit, target = next(iter(forecast.budget.items()))
    return ForecastSummary(
        metric=forecast.metric,
        budget=forecast.budget,
        beyond=target / space.rung_budgets()[-1][unit],
        level=forecast.level,
        alpha=forecast.alpha,
        law_error=forecast.law_error,
        noise=forecast.noise if seed_noise is None else seed_noise,
        noise_source=forecast.noise_source if seed_noise is None else "validated",
        check=forecast.check,
        recorded=forecast.recorded,
        genomes=genomes,
    )


class AnytimePoint(NamedTuple):
    """The anytime curve after one result: the training spent until then, and the best
    top-rung value so far (None before the first)."""

    tokens: int
    steps: int
    worker_seconds: float
    best: float | None


def anytime_curve(
    trials: Trials,
    space: SearchSpace,
    objective: Objective,
    baseline: float | None = None,
) -> list[AnytimePoint]:
    """The best top-rung value of `objective` after each result, against the training
    spent until then (tokens, steps and worker-seconds of every trial with a result, in
    the order results were recorded; attempts lost to a dead worker or an interruption
    are left out). Stalled trials (see `stalled`, with the run's `baseline`) count for
    the compute they spent but not for the best value."""
    finished = sorted((t for t in trials if t.recorded is not None), key=lambda t: t.recorded)
    top = len(space.rung_budgets()) - 1
    stuck = stalled(finished, baseline)
    tokens = steps = 0
    seconds = 0.0
    best: float | None = None
    points = []
    for trial in finished:
        tokens += int(trial.metrics.get("tokens") or 0)
        steps += int(trial.metrics.get("steps") or 0)
        seconds += float(trial.metrics.get("wall_seconds") or 0.0)
        value = trial.metric(objective.metric)
        counts = trial.rung == top and trial.status == SUCCESS and trial.trial_id not in stuck
        if counts and _finite(value) and (best is None or objective.sign * (value - best) < 0):
            best = value
        points.append(AnytimePoint(tokens, steps, seconds, best))
    return points


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class WorkerTime:
    """Worker-seconds over every session of a run: available (workers × the session's
    length), busy (in trials), and where the idle ones went: `starting`, before each
    worker's first trial of a session (Ray starting its processes, each importing torch);
    `ending`, after each worker's last trial (the budget spent while the last trials
    ran); and the rest, `between` trials (the driver's decisions and the hand-overs).
    `lent`: idle worker-seconds whose cores trained the trials still running
    (`evo.executor.CoreLending`)."""

    available: float
    busy: float
    starting: float
    ending: float
    lent: float = 0.0

    @property
    def between(self) -> float:
        return max(self.available - self.busy - self.starting - self.ending, 0.0)

    @property
    def utilization(self) -> float | None:
        return None if self.available <= 0 else min(self.busy / self.available, 1.0)

    @property
    def cores_used(self) -> float | None:
        """The share of the workers' cores that trained: busy, or lent to a busy one."""
        if self.available <= 0:
            return None
        return min((self.busy + self.lent) / self.available, 1.0)

    def describe(self, running: bool = False) -> str:
        """One line for status and report: the utilization and its idle parts. While the
        run is `running` no trial is its workers' last yet: a worker idle since its latest
        trial is between trials."""
        share = 100 / self.available
        between = self.between + (self.ending if running else 0.0)
        idle = f"idle: {share * self.starting:.1f}% starting, {share * between:.1f}% between trials"
        if not running:
            idle += f", {share * self.ending:.1f}% after the last trials"
        text = f"{100 * (self.utilization or 0):.0f}% (busy worker-seconds / available; {idle})"
        if self.lent > 0:
            text += (
                f"; {share * self.lent:.1f}% lent their cores to the trials still running, "
                f"so {100 * (self.cores_used or 0):.0f}% of the cores trained"
            )
        return text


def worker_time(trials: Trials, sessions: list[SessionRecord]) -> WorkerTime:
    """`WorkerTime` of `trials`. A session's workers were available from its start to its
    end; a session whose driver was killed ends at its last finished trial, or at the next
    session's start if that is sooner. Which trial ran on which worker is not needed: a
    session's first `workers` starts are its workers' first trials and its last `workers`
    ends their last ones."""
    ran = sorted(
        _Ran(t.started_at, t.finished_at, t.lent_seconds or 0.0)
        for t in trials
        if t.started_at is not None and t.finished_at is not None
    )
    starts = [r.started for r in ran]
    available = busy = starting = ending = lent = 0.0
    for index, session in enumerate(sessions):
        following = sessions[index + 1].started_at if index + 1 < len(sessions) else None
        first = bisect.bisect_left(starts, session.started_at)
        last = len(ran) if following is None else bisect.bisect_left(starts, following)
        inside = ran[first:last]
        ended = session.ended_at or _last_finish(inside, following)
        if ended is None:
            continue
        length = (ended - session.started_at).total_seconds()
        started = [min(r.started, ended) for r in inside]
        finished = [min(r.finished, ended) for r in inside]
        busy += sum(
            max((f - s).total_seconds(), 0.0) for s, f in zip(started, finished, strict=True)
        )
        lent += sum(r.lent for r in inside)
        available += session.workers * length
        firsts = heapq.nsmallest(session.workers, started)
        unused = session.workers - len(firsts)  # workers that never got a trial
        starting += sum((s - session.started_at).total_seconds() for s in firsts)
        starting += unused * length
        lasts = heapq.nlargest(session.workers, finished)
        ending += sum((ended - f).total_seconds() for f in lasts)
    return WorkerTime(available, busy, starting, ending, lent)


class _Ran(NamedTuple):
    """A trial that started and finished: when, and the seconds lent to it."""

    started: datetime
    finished: datetime
    lent: float


def utilization(trials: Trials, sessions: list[SessionRecord]) -> float | None:
    """Busy worker-seconds over available ones, over every session of the run (see
    `worker_time`); None before any session has a trial."""
    return worker_time(trials, sessions).utilization


def _last_finish(ran: Sequence[_Ran], cutoff: datetime | None) -> datetime | None:
    if not ran:
        return cutoff
    last = max(r.finished for r in ran)
    return last if cutoff is None else min(last, cutoff)
