"""The numbers `evo status`, `evo report` and `evo dashboard` show, computed from a run's
trials (`Storage.trials_frame`): trials and advances per rung, the successful trials and
their Pareto front, the anytime curve (the best value at the top rung against compute
spent), how busy the workers were, each genome's score in the search and the search's
order of the genomes (`search_order`, predicted at a target beyond the top rung:
`forecast_summary`), and which trials stalled. The run's settings in words (its space,
budgets, spending, the target's passes over the data) are in `evo.describe`, without
pandas; how many generations a run has completed is in `evo.generations` (read without
pandas, for `evo ls`). What draws these numbers is in `evo.report`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import numpy as np
import pandas as pd

from evo.metrics import TrialStatus
from evo.schedule.forecast import forecast_objective, shown_interval
from evo.space import Objective, SearchSpace
from evo.storage import ForecastRecord, SessionRecord

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


def rung_rows(frame: pd.DataFrame, space: SearchSpace) -> list[RungRow]:
    """One row per rung, from `Storage.trials_frame`."""
    rows = []
    budgets = space.rung_budgets()
    last = frame.sort_values("trial_id").groupby("decision").tail(1)  # latest attempts
    for rung, budget in enumerate(budgets):
        here = last[last["rung"] == rung]
        status = here["status"]
        above = last[last["rung"] == rung + 1]
        rows.append(
            RungRow(
                rung=rung,
                budget=budget,
                trials=len(here),
                done=int((status == SUCCESS).sum()),
                failed=int(status.isin(FAILURES).sum()),
                active=int(status.isin(ACTIVE).sum()),
                advanced=above["genome_id"].nunique() if rung + 1 < len(budgets) else 0,
            )
        )
    return rows


def top_rung(frame: pd.DataFrame, space: SearchSpace) -> pd.DataFrame:
    """The trials at the top rung: the scores that matter."""
    return frame[frame["rung"] == len(space.rung_budgets()) - 1]


def ranked(frame: pd.DataFrame, objective: Objective) -> pd.DataFrame:
    """The rows best first by the objective; ties keep their order."""
    ascending = objective.sign > 0
    return frame.sort_values(objective.metric, ascending=ascending, kind="stable")


def successful_trials(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The trials that finished with a finite value of every objective."""
    values = frame[[o.metric for o in objectives]].to_numpy(dtype=float)
    done = (frame["status"] == SUCCESS).to_numpy()
    return frame[done & np.isfinite(values).all(axis=1)]


def pareto_front(frame: pd.DataFrame, objectives: Sequence[Objective]) -> pd.DataFrame:
    """The successful trials that no other successful trial dominates, best first by the
    first objective.

    A trial dominates another when it is at least as good in every objective and better
    in one. Equal trials do not dominate each other, so ties stay on the front together.
    """
    finished = successful_trials(frame, objectives)
    signs = np.array([o.sign for o in objectives])
    costs = finished[[o.metric for o in objectives]].to_numpy(dtype=float) * signs
    dominated = np.array(
        [np.any((costs <= cost).all(axis=1) & (costs < cost).any(axis=1)) for cost in costs],
        dtype=bool,
    )
    return ranked(finished[~dominated], objectives[0])


def stalled(frame: pd.DataFrame, baseline: float | None) -> pd.Series:
    """Which trials of `frame` stalled (STALLED_RULE), given the run's unigram baseline
    in bits per byte (`RunInfo.unigram_bits_per_byte`; a run without one judges none).
    Stalled trials stay successes for the search; reports list them apart and leave
    them out of the charts, whose axes they would stretch."""
    if baseline is None:
        return pd.Series(False, index=frame.index)
    done = frame["status"] == SUCCESS
    return done & (frame["bits_per_byte"] >= baseline)


def search_scores(frame: pd.DataFrame, objective: Objective) -> dict[int, SearchScore]:
    """Each scored genome's value of `objective` in the search, from its successful trial
    at the highest rung it reached (the trial `evo promote --genome` starts from)."""
    done = frame[(frame["status"] == SUCCESS) & frame[objective.metric].notna()]
    last = done.sort_values(["rung", "trial_id"]).groupby("genome_id").tail(1)
    genomes, values, rungs = (
        last[name].astype(float).tolist() for name in ("genome_id", objective.metric, "rung")
    )
    return {
        int(genome): SearchScore(value, int(rung))
        for genome, value, rung in zip(genomes, values, rungs, strict=True)
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
    genes: dict[str, object]
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
    frame: pd.DataFrame,
    space: SearchSpace,
    forecast: ForecastRecord | None,
    seed_noise: float | None = None,
) -> ForecastSummary | None:
    """The run's forecast (`Storage.forecast`) with each scored genome's rung scores (from
    `Storage.trials_frame`), in the search's order; None when the run forecasts nothing.
    `seed_noise`: `evo validate`'s seed spread at the target on the law's scale
    (`evo.validate.target_seed_noise`), which replaces the fit's estimate in the
    intervals. What `evo status`, the report and the dashboard show:

        forecast_summary(storage.trials_frame(run), space, storage.forecast(run),
                         target_seed_noise(validation_report(storage, run, space), forecast))
    """
    objective = forecast_objective(space)
    if forecast is None or objective is None or forecast.metric != objective.metric:
        return None
    done = frame[(frame["status"] == SUCCESS) & frame[objective.metric].notna()]
    measured: dict[int, dict[int, float]] = {}
    for genome, rung, value in done[["genome_id", "rung", objective.metric]].itertuples(
        index=False, name=None
    ):
        measured.setdefault(int(genome), {})[int(rung)] = float(value)
    gene_columns = [c for c in frame.columns if c.startswith("gene.")]
    first = done.drop_duplicates("genome_id").set_index("genome_id")[gene_columns]
    predicted = {g: p.mean for g, p in forecast.predictions.items()}
    genomes = []
    for genome in search_order(search_scores(frame, objective), objective, predicted):
        prediction = forecast.predictions.get(genome)
        if prediction is None:
            continue
        genes = {c.removeprefix("gene."): v for c, v in first.loc[genome].items() if v == v}
        low, high = shown_interval(prediction, forecast, seed_noise)
        genomes.append(GenomeForecast(genome, genes, measured[genome], prediction.mean, low, high))
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


def anytime_curve(
    frame: pd.DataFrame,
    space: SearchSpace,
    objective: Objective,
    baseline: float | None = None,
) -> pd.DataFrame:
    """The best top-rung value of `objective` after each result, against the training
    spent until then (tokens, steps and worker-seconds of every trial with a result, in
    the order results were recorded; attempts lost to a dead worker or an interruption
    are left out). Stalled trials (see `stalled`, with the run's `baseline`) count for
    the compute they spent but not for the best value. Columns: tokens, steps,
    worker_seconds, best."""
    finished = frame[frame["recorded"].notna()].sort_values("recorded")
    top = len(space.rung_budgets()) - 1
    values = finished[objective.metric].where(
        (finished["rung"] == top) & (finished["status"] == SUCCESS) & ~stalled(finished, baseline)
    )
    best = (values * objective.sign).cummin().ffill() * objective.sign
    return pd.DataFrame(
        {
            "tokens": finished["tokens"].fillna(0).cumsum().to_numpy(),
            "steps": finished["steps"].fillna(0).cumsum().to_numpy(),
            "worker_seconds": finished["wall_seconds"].fillna(0).cumsum().to_numpy(),
            "best": best.to_numpy(),
        }
    )


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


def worker_time(frame: pd.DataFrame, sessions: list[SessionRecord]) -> WorkerTime:
    """`WorkerTime` of the trials in `frame`. A session's workers were available from its
    start to its end; a session whose driver was killed ends at its last finished trial, or
    at the next session's start if that is sooner. Which trial ran on which worker is not
    needed: a session's first `workers` starts are its workers' first trials and its last
    `workers` ends their last ones."""
    ran = frame[frame["started_at"].notna() & frame["finished_at"].notna()]
    available = busy = starting = ending = lent = 0.0
    for index, session in enumerate(sessions):
        following = sessions[index + 1].started_at if index + 1 < len(sessions) else None
        inside = ran[ran["started_at"] >= session.started_at]
        if following is not None:
            inside = inside[inside["started_at"] < following]
        ended = session.ended_at or _last_finish(inside, following)
        if ended is None:
            continue
        length = (ended - session.started_at).total_seconds()
        started = inside["started_at"].clip(upper=ended)
        finished = inside["finished_at"].clip(upper=ended)
        busy += (finished - started).dt.total_seconds().clip(lower=0).sum()
        lent += inside["lent_seconds"].fillna(0).sum()
        available += session.workers * length
        first = started.nsmallest(session.workers)
        unused = session.workers - len(first)  # workers that never got a trial
        starting += (first - session.started_at).dt.total_seconds().sum() + unused * length
        last = finished.nlargest(session.workers)
        ending += (ended - last).dt.total_seconds().sum()
    return WorkerTime(available, busy, starting, ending, float(lent))


def utilization(frame: pd.DataFrame, sessions: list[SessionRecord]) -> float | None:
    """Busy worker-seconds over available ones, over every session of the run (see
    `worker_time`); None before any session has a trial."""
    return worker_time(frame, sessions).utilization


def _last_finish(trials: pd.DataFrame, cutoff: datetime | None) -> datetime | None:
    if trials.empty:
        return cutoff
    last = trials["finished_at"].max().to_pydatetime()
    return last if cutoff is None else min(last, cutoff)
