"""Replay search methods against a table of real results, 50 times each, in minutes.

`bench/build_table.py` trains configurations of a space for real at every rung with
several seeds. Here every method searches that space as it would for real, with the
same budget of training tokens, but a trial is answered from the table instead of
trained, and time is simulated: `--workers` workers, each busy for the seconds the
table says the trial took, results arriving in the order they would finish.

- A configuration in the table is answered with one of its seeds, drawn once per
  (repetition, configuration) so that its later rungs continue the same run.
- One that is not is answered by its `K` nearest configurations (genes on their own
  axes, scaled to [0, 1]; a choice without an order counts 1 for a mismatch), their
  values at the drawn seed weighted by inverse squared distance. How far that surrogate
  is from the truth is measured by leaving each configuration out in turn and printed
  beside the seed-to-seed noise it has to be judged against.

The methods are those of `bench/search_efficiency.py`, plus evo's generational mode and
TPE without a pruner:
evo's own drivers (`SteadyStateSearch`, `GenerationalSearch`) run unchanged on a
simulated executor, and Optuna's samplers and pruner through ask and tell.

What each method is worth at any moment is the true quality of its incumbent (the
genome with its best top-rung result so far): the mean over seeds of that genome's
top-rung bits per byte (the surrogate's mean for a genome outside the table), so a
lucky seed earns nothing. Printed and plotted against tokens spent:

- normalized regret: (incumbent − best in the table) / (median − best in the table),
  0 for the table's best configuration, 1 for a median one;
- mean rank of the methods, repetition by repetition;
- at the end: the interquartile mean of the regret with a bootstrap 95% interval, the
  median observed best (what `bench/search_efficiency.py` reports), and which
  methods' intervals separate from evo's.

    python bench/replay.py --table bench/data/tiny_table.parquet --repetitions 50
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import json
import math
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from multiprocessing import get_context
from pathlib import Path
from typing import Any, cast

import moocore
import numpy as np
import plotly.graph_objects as go
import pyarrow.parquet as pq
import yaml
from plotly.subplots import make_subplots
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from search_efficiency import (
    bootstrap_interval,
    enqueue_initial,
    iqm,
    on_grid,
    optuna_distribution,
)

from evo.checkpoints import CheckpointStore
from evo.data import TrialData
from evo.driver import open_run
from evo.executor import Executor, TrialJob, TrialObserver, TrialOutcome, search_status
from evo.metrics import TrialStatus
from evo.operators import FAILED, repair, to_genome, to_individual
from evo.schedule.budget import cost_to_top, trial_cost
from evo.schedule.forecast import TargetForecast
from evo.schedule.rungs import Ladder, RungResults
from evo.search.generational import GenerationalSearch
from evo.search.steady_state import SteadyStateSearch
from evo.space import Domain, SearchSpace, space_from_dict
from evo.storage import ForecastRecord, Storage, genome_hash
from llm.config import apply_overrides
from llm.trial import TrialEnd, TrialResult

METHODS = [
    "evo", "evo-generational", "random", "random+asha", "tpe", "tpe+hyperband", "nsga2",
    "evo+predicted-pick", "evo+predicted-advance",
]  # fmt: skip
# evo's search with a target beyond the top rung (give rungs below the table's top, e.g.
# --set 'search.rungs=[25000, 75000]'): its incumbent is its pick, the top-rung genome
# with the best score predicted at the target (evo.summary.search_order), not the best
# score at the top rung; with -advance it also advances the genomes of a rung in the
# order of their predicted scores at the target, not of their scores at the rung.
PREDICTED = ("evo+predicted-pick", "evo+predicted-advance")
OPTUNA = ("tpe", "tpe+hyperband", "nsga2")
# After each result: (tokens spent, the incumbent's true value, the best value observed)
Curve = list[tuple[float, float, float]]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--table", default="bench/data/tiny_table.parquet")
    p.add_argument("--repetitions", type=int, default=50)
    p.add_argument("--workers", type=int, default=1, help="simulated workers per search")
    p.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    p.add_argument("--budget", type=float, help="training tokens per search (default: the space's)")
    p.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    p.add_argument(
        "--neighbours",
        type=int,
        default=3,
        help="configurations that answer for one outside the table (1: the nearest only, "
        "so every method searches the table's configurations)",
    )
    p.add_argument(
        "--objectives",
        type=int,
        choices=[1, 2],
        default=1,
        help="1: bits per byte; 2: bits per byte and parameters, scored by hypervolume "
        "(tpe+hyperband is left out: Optuna cannot prune a multi-objective study)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="key.path=value applied to every method's space (e.g. search.population=16)",
    )
    p.add_argument("--html", default="results/replay.html")
    p.add_argument("--json", help="also write every run's curve here")
    return p.parse_args()


# The table and its surrogate


def axis_position(domain: Domain, value: Any) -> list[float]:
    """A gene's value as coordinates in [0, 1]: its place on the (log) axis or in the
    ordered values, or one coordinate per unordered choice (1/√2 each, so that two
    different choices are 1 apart)."""
    if domain.kind == "float":
        low, high = domain.bounds
        if high == low:
            return [0.0]
        if domain.log:
            return [(math.log(value) - math.log(low)) / (math.log(high) - math.log(low))]
        return [(value - low) / (high - low)]
    values = domain.values()
    if domain.kind == "int" or domain.is_numeric_choice:
        return [values.index(value) / max(len(values) - 1, 1)]
    return [(value == choice) / math.sqrt(2) for choice in values]


def from_table(domain: Domain, value: Any) -> Any:
    """A value read from the table, in the type the domain gives it (parquet stores a
    numeric choice as float when a column mixes int and float)."""
    if domain.kind == "float":
        return float(value)
    return next(choice for choice in domain.values() if choice == value)


def fill_missing_times(per_token: np.ndarray) -> np.ndarray:
    """Seconds per token where a chain stopped early (a failed rung trains nothing after
    it): the configuration's own mean, else the table's median at that rung."""
    own = np.nanmean(per_token, axis=(1, 2), keepdims=True)
    at_rung = np.nanmedian(per_token, axis=(0, 1), keepdims=True)
    filled = np.where(np.isnan(per_token), own, per_token)
    return np.where(np.isnan(filled), at_rung, filled)


@dataclass
class Table:
    """Every configuration's value and seconds per token at each (seed, rung)."""

    space: SearchSpace
    keys: dict[str, int]  # genome hash → configuration
    genes: list[dict[str, Any]]
    points: np.ndarray  # (configurations, coordinates)
    values: np.ndarray  # (configurations, seeds, rungs); NaN: failed or never reached
    per_token: np.ndarray  # (configurations, seeds, rungs): wall seconds per token
    vocab_size: int  # the tokenizer's, for repairing genomes as the search does
    neighbours_k: int = 3
    # Trials answered since the counts were reset, and how many of them from the table.
    answered: int = 0
    exact: int = 0

    @property
    def top_mean(self) -> np.ndarray:
        """Each configuration's mean top-rung value over seeds, a seed that failed (or
        never got there) counted as the worst value seen at the top rung: a genome that
        fails one run in three is worth less than one that never fails, not nothing."""
        top = self.values[:, :, -1]
        return np.where(np.isnan(top), np.nanmax(top), top).mean(axis=1)

    @classmethod
    def load(cls, path: str) -> Table:
        file = pq.read_table(path)
        meta = file.schema.metadata or {}
        data = yaml.safe_load(meta[b"evo.space"].decode())
        space = space_from_dict(data, where=path)
        frame = file.to_pandas()
        configs = sorted(frame["config"].unique())
        seeds = sorted(frame["seed"].unique())
        rungs = len(space.rung_budgets())
        values = np.full((len(configs), len(seeds), rungs), np.nan)
        per_token = np.full_like(values, np.nan)
        genes, keys = [], {}
        for c, (_, rows) in enumerate(frame.groupby("config", sort=True)):
            first = rows.iloc[0]
            config = {n: from_table(d, first[n]) for n, d in space.genes.items()}
            genes.append(config)
            keys[genome_hash(config)] = c
            for row in rows.itertuples():
                s = seeds.index(row.seed)
                if row.status == TrialStatus.DONE.value:
                    values[c, s, row.rung] = row.bits_per_byte
                if row.tokens > 0:
                    per_token[c, s, row.rung] = row.wall_seconds / row.tokens
        per_token = fill_missing_times(per_token)
        points = np.array([cls.coordinates(space, g) for g in genes])
        vocab = int(meta.get(b"evo.vocab_size", space.data.vocab_size))
        space = replayable_space(data, path, genes, vocab)
        return cls(space, keys, genes, points, values, per_token, vocab)

    @staticmethod
    def coordinates(space: SearchSpace, genes: dict[str, Any]) -> list[float]:
        return [x for name, d in space.genes.items() for x in axis_position(d, genes[name])]

    @property
    def seeds(self) -> int:
        return self.values.shape[1]

    def neighbours(
        self, genes: dict[str, Any], leave_out: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The configurations that answer for `genes` and their weights: itself when it is
        in the table, else its K nearest."""
        exact = self.keys.get(genome_hash(genes))
        if exact is not None and exact != leave_out:
            return np.array([exact]), np.array([1.0])
        point = np.array(self.coordinates(self.space, genes))
        distance = np.linalg.norm(self.points - point, axis=1)
        if leave_out is not None:
            distance[leave_out] = np.inf
        nearest = np.argsort(distance, kind="stable")[: self.neighbours_k]
        return nearest, 1.0 / np.maximum(distance[nearest], 1e-6) ** 2

    def answer(self, genes: dict[str, Any], rung: int, seed: int) -> tuple[float | None, float]:
        """A trial's value (None: it failed) and wall seconds per token."""
        self.answered += 1
        self.exact += genome_hash(genes) in self.keys
        configs, weights = self.neighbours(genes)
        values = self.values[configs, seed, rung]
        per_token = float(np.nanmean(self.per_token[configs, seed, rung]))
        ok = ~np.isnan(values)
        if weights[ok].sum() < weights.sum() / 2:  # most of the weight failed there
            return None, per_token
        return float(np.average(values[ok], weights=weights[ok])), per_token

    def params(self, genes: dict[str, Any]) -> int:
        return self.space.model_config(genes, self.vocab_size).param_count().total

    def reference_point(self) -> np.ndarray:
        """The fixed point hypervolumes are measured from: the table's worst mean value,
        and the space's parameter ceiling (else 10% over the table's largest model)."""
        ceiling = self.space.constraints.max_params
        if ceiling is None:
            ceiling = 1.1 * max(self.params(g) for g in self.genes)
        return np.array([float(self.top_mean.max()), float(ceiling)])

    def table_hypervolume(self) -> float:
        """The hypervolume of every configuration's (mean value, parameters): a method
        that found all of the table's front scores 0 regret."""
        points = [(m, self.params(g)) for m, g in zip(self.top_mean, self.genes, strict=True)]
        return hypervolume(points, self.reference_point())

    def true_value(self, genes: dict[str, Any], leave_out: int | None = None) -> float:
        """The mean over seeds of the top-rung value (see `top_mean`)."""
        configs, weights = self.neighbours(genes, leave_out)
        return float(np.average(self.top_mean[configs], weights=weights))


def surrogate_error(table: Table) -> dict[str, float]:
    """Leave each configuration out, answer it from the others: the error of the mean
    top-rung value, beside the seed-to-seed noise and the spread between configurations."""
    truth = table.top_mean
    ok = np.isfinite(truth)
    predicted = np.array([table.true_value(table.genes[c], leave_out=c) for c in range(len(truth))])
    both = ok & np.isfinite(predicted)
    top = table.values[ok, :, -1]
    return {
        "configurations": float(len(truth)),
        "mae": float(np.abs(predicted[both] - truth[both]).mean()),
        "spearman": float(stats.spearmanr(predicted[both], truth[both]).statistic),
        "seed_std": float(np.nanmean(np.nanstd(top, axis=1, ddof=1))),
        "spread_std": float(np.std(truth[ok], ddof=1)),
    }


def replayable_space(
    data: dict[str, Any], where: str, genomes: list[dict[str, Any]], vocab: int
) -> SearchSpace:
    """The table's space as this evo accepts its genomes. A table built before evo refused
    a warmup that outlasts the lowest rung's stable phase holds such genomes
    (tiny_table.parquet: batch 16 cools down after 9.8 of its 12 steps at 25k tokens, with
    10 warmup steps, and its initial genome has batch 16); there the warmup is lowered to
    the longest that keeps every genome (and initial genome) of the table valid. No
    replayed trial changes (each is answered from the table), and a search can propose
    every genome of the table, as when it was built."""
    train = data.setdefault("fixed", {}).setdefault("train", {})
    recorded = int(train.get("warmup_steps", 0))
    for warmup in range(recorded, -1, -1):
        train["warmup_steps"] = warmup
        space = space_from_dict(data, where=where)
        everyone = [*genomes, *(space.search.initial or [])]
        if warmup == 0 or not any(space.problems(g, vocab) for g in everyone):
            break
    if warmup < recorded:
        print(f"{where}: warmup lowered from {recorded} to {warmup} steps to fit its rungs")
    return space


# A simulated executor for evo's own drivers


def seed_of(repetition: int, genes: dict[str, Any], seeds: int) -> int:
    digest = hashlib.sha256(f"{repetition}:{genome_hash(genes)}".encode()).digest()
    return int.from_bytes(digest[:4], "little") % seeds


class TableExecutor(Executor):
    """`workers` simulated workers whose trials are answered from the table."""

    def __init__(
        self,
        table: Table,
        space: SearchSpace,
        genes_of: Callable[[int], dict[str, Any]],
        workers: int,
        repetition: int,
    ) -> None:
        self.table, self.space, self.genes_of = table, space, genes_of
        self.capacity, self.repetition = workers, repetition
        self.clock = 0.0
        self._events: list[tuple[float, int, TrialJob, TrialOutcome]] = []
        self._submitted = 0

    def load_data(self, data: TrialData) -> None:
        pass

    @property
    def in_flight(self) -> int:
        return len(self._events)

    def submit(self, job: TrialJob, observer: TrialObserver) -> None:
        genes = self.genes_of(job.genome_id)
        outcome = simulated_outcome(
            self.table, self.space, genes, job.rung, self.repetition, self.clock
        )
        if outcome.status is TrialStatus.DONE and job.keep_stable and job.checkpoints:
            name = job.checkpoints.name(job.genome_id, job.rung)
            job.checkpoints.write(name, {})  # a replayed trial leaves an empty checkpoint
            outcome = replace(outcome, checkpoint=name)
        self._submitted += 1
        heapq.heappush(self._events, (outcome.finished, self._submitted, job, outcome))
        observer.started(job, 0)

    def wait(self, observer: TrialObserver) -> None:
        finished, _, job, outcome = heapq.heappop(self._events)
        self.clock = finished
        observer.finished(job, outcome)

    def cancel(self) -> None:
        self._events.clear()


def simulated_outcome(
    table: Table,
    space: SearchSpace,
    genes: dict[str, Any],
    rung: int,
    repetition: int,
    now: float,
    continued: bool = True,
) -> TrialOutcome:
    cost = trial_cost(space, genes, rung, continued=continued)
    assert cost.tokens is not None and cost.steps is not None, "replay needs token rungs"
    # A method with fewer rungs (random search, the generational mode) trains to the
    # table's rung of the same budget.
    at = table.space.rung_budgets().index(space.rung_budgets()[rung])
    value, per_token = table.answer(genes, at, seed_of(repetition, genes, table.seeds))
    seconds = per_token * cost.tokens
    end = TrialEnd.DONE if value is not None else TrialEnd.FAILED
    measured = {"bits_per_byte": value} if value is not None else {}
    result = TrialResult(
        status=end,
        metrics={
            **measured,
            "params": table.params(genes),
            "tokens": cost.tokens,
            "steps": cost.steps,
            "wall_seconds": seconds,
        },
    )
    return TrialOutcome(result, search_status(end), "replay", "simulated", now, now + seconds)


def no_data() -> TrialData:
    """What the drivers hand a simulated executor, which trains nothing."""
    return cast(TrialData, None)


def driver_run(
    table: Table,
    space: SearchSpace,
    mode: str,
    workers: int,
    repetition: int,
    limit: float,
    method: str = "evo",
) -> Curve:
    storage = Storage("sqlite://")
    name = f"replay-{repetition}"
    open_run(storage, name, space)
    genomes: dict[int, dict[str, Any]] = {}

    def genes_of(genome_id: int) -> dict[str, Any]:
        if genome_id not in genomes:
            genomes.update(storage.genomes(name))
        return genomes[genome_id]

    executor = TableExecutor(table, space, genes_of, workers, repetition)
    vocab = table.vocab_size
    forecasts = keep_forecasts(storage)
    if mode == "generational":
        GenerationalSearch(space, name, storage, executor, no_data(), vocab).run()
    else:
        search = SteadyStateSearch(
            space,
            name,
            storage,
            executor,
            no_data(),
            vocab,
            proposer=mode,  # type: ignore[arg-type]
            checkpoints=CheckpointStore(f"memory://{name}/{method}/{uuid.uuid4().hex}"),
        )
        forecast = search.scheduler.forecast
        if method == "evo+predicted-advance" and forecast is not None:
            search.scheduler.ladder = PredictedLadder(
                search.ladder.budgets, search.ladder.eta, search.ladder.slack, forecast
            )
        search.run()
    frame = storage.trials_frame(name)
    finished = frame[frame["recorded"].notna()]
    # A generation is trained whole once started, past the budget if need be: a trial
    # started after the budget was committed (a steady-state search never starts one)
    # does not count.
    by_start = finished.sort_values(["started_at", "trial_id"])
    committed = by_start["tokens"].fillna(0).cumsum()
    finished = by_start[committed <= limit].sort_values("recorded")
    genomes.update(storage.genomes(name))
    tokens = finished["tokens"].fillna(0).cumsum().to_numpy()
    top = len(space.rung_budgets()) - 1
    tracker = tracker_for(table, space)
    if method in PREDICTED and forecasts:
        tracker = PredictedPick(table, forecasts)
    curve: Curve = []
    for spent, row in zip(tokens, finished.itertuples(), strict=True):
        done = row.status == TrialStatus.DONE.value and row.rung == top
        value = row.bits_per_byte if done else None
        if isinstance(tracker, PredictedPick):
            tracker.result(row.genome_id, genomes[row.genome_id], value, int(row.recorded))
        else:
            tracker.offer(genomes[row.genome_id], value)
        curve.append((float(spent), tracker.true, tracker.observed))
    return curve


def keep_forecasts(storage: Storage) -> dict[int, ForecastRecord]:
    """The forecast the search stored with each result, by the result's place in the
    order (storage itself keeps only the latest)."""
    forecasts: dict[int, ForecastRecord] = {}
    finish = storage.finish_trial

    def finish_and_keep(trial_id: int, outcome: TrialOutcome, **kwargs: Any) -> int:
        recorded = finish(trial_id, outcome, **kwargs)
        if kwargs.get("forecast") is not None:
            forecasts[recorded] = kwargs["forecast"]
        return recorded

    storage.finish_trial = finish_and_keep  # type: ignore[method-assign]
    return forecasts


class PredictedPick:
    """The search's pick after each result: of the genomes with a top-rung result, the
    one with the best score predicted at the target by the forecast stored with the
    latest result (as `evo.summary.search_order` ranks them); its true value."""

    def __init__(self, table: Table, forecasts: dict[int, ForecastRecord]) -> None:
        self.table, self.forecasts = table, forecasts
        self.predicted: dict[int, float] = {}
        self.top: dict[int, tuple[dict[str, Any], float]] = {}  # genome → genes, score
        self.genome: int | None = None
        self.observed = self.true = math.inf

    def result(
        self, genome_id: int, genes: dict[str, Any], value: float | None, recorded: int
    ) -> None:
        """A result: its genome, its top-rung score (None: not one), its place."""
        forecast = self.forecasts.get(recorded)
        if forecast is not None:
            self.predicted = {g: p.mean for g, p in forecast.predictions.items()}
        if value is not None and math.isfinite(value):
            self.top[genome_id] = (genes, value)
        if self.top:
            pick = min(self.top, key=lambda g: self.predicted.get(g, math.inf))
            if pick != self.genome:
                genes, value = self.top[pick]
                self.genome, self.observed, self.true = pick, value, self.table.true_value(genes)


class _PredictedOrder:
    """A rung's results as the ladder reads them (`best`, `quota`, length), ranked by
    each genome's score predicted at the target (a failure there last)."""

    def __init__(self, results: RungResults, forecast: TargetForecast) -> None:
        self.results, self.forecast = results, forecast

    def __len__(self) -> int:
        return len(self.results)

    def quota(self, eta: float) -> int:
        return self.results.quota(eta)

    def best(self, k: int) -> list[int]:
        scored = [g for g in self.results.genomes if self.results.values(g)[0] < FAILED]
        predicted = self.forecast.predictions(scored)
        if not predicted:  # no genome has two rungs yet: nothing is predicted
            return self.results.best(k)
        sign = self.forecast.objective.sign
        ranked = sorted(scored, key=lambda g: sign * predicted[g].mean)
        failed = [g for g in self.results.genomes if g not in predicted]
        return (ranked + failed)[:k]


@dataclass(frozen=True)
class PredictedLadder(Ladder):
    """The ladder, advancing (and dropping) a rung's genomes in the order of their scores
    predicted at the target instead of their scores at the rung (evo+predicted-advance)."""

    forecast: TargetForecast | None = None

    def to_advance(self, results: RungResults, waiting: set[int]) -> int | None:
        assert self.forecast is not None
        return super().to_advance(
            cast(RungResults, _PredictedOrder(results, self.forecast)), waiting
        )

    def to_drop(self, results: RungResults, waiting: set[int]) -> list[int]:
        assert self.forecast is not None
        return super().to_drop(cast(RungResults, _PredictedOrder(results, self.forecast)), waiting)


def hypervolume(points: list[tuple[float, float]], reference: np.ndarray) -> float:
    """The area dominated by `points` (both objectives minimised) up to `reference`."""
    inside = [p for p in points if p[0] < reference[0] and p[1] < reference[1]]
    return float(moocore.hypervolume(np.array(inside), ref=reference)) if inside else 0.0


class Front:
    """Two objectives (bits per byte, parameters): after each result, how much of the
    table's hypervolume the top-rung results so far leave out, by their true values
    (`true`) and by the values observed (`observed`); 0 when the table's whole front
    is matched, 1 when nothing is found."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.reference, self.whole = table.reference_point(), table.table_hypervolume()
        self.true_points: list[tuple[float, float]] = []
        self.observed_points: list[tuple[float, float]] = []
        self.observed = self.true = 1.0

    def offer(self, genes: dict[str, Any], value: float | None) -> None:
        if value is None or not math.isfinite(value):
            return
        params = self.table.params(genes)
        self.true_points.append((self.table.true_value(genes), params))
        self.observed_points.append((value, params))
        self.true = 1 - hypervolume(self.true_points, self.reference) / self.whole
        self.observed = 1 - hypervolume(self.observed_points, self.reference) / self.whole


class Incumbent:
    """The genome with the best top-rung result so far, and its true value."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.observed = self.true = math.inf

    def offer(self, genes: dict[str, Any], value: float | None) -> None:
        if value is not None and math.isfinite(value) and value < self.observed:
            self.observed, self.true = value, self.table.true_value(genes)


def tracker_for(table: Table, space: SearchSpace) -> Incumbent | Front:
    return Front(table) if len(space.search.objectives) == 2 else Incumbent(table)


# Optuna, through ask and tell on simulated workers


def optuna_study(
    table: Table, space: SearchSpace, method: str, repetition: int, limit: float
) -> tuple[Any, int]:
    """The study of an Optuna method, configured as its authors intend (NSGA-II's
    population a quarter of the top-rung trials `limit` tokens buy), and the rung its
    trials start at."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rungs = len(space.rung_budgets())
    pruner: Any = optuna.pruners.NopPruner()
    first = rungs - 1  # without a pruner, every trial trains straight to the top rung
    if method == "nsga2":
        population = max(4, int(limit / typical_top_cost(space, table.vocab_size)) // 4)
        sampler: Any = optuna.samplers.NSGAIISampler(population_size=population, seed=repetition)
    else:
        sampler = optuna.samplers.TPESampler(seed=repetition)
    if method == "tpe+hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=rungs, reduction_factor=int(space.search.eta)
        )
        first = 0
    # Hyperband picks a trial's bracket from a hash of the study's name: fixed, so that a
    # repetition is reproducible.
    study = optuna.create_study(
        study_name=f"{method}-{repetition}",
        directions=["minimize"] * len(space.search.objectives),
        sampler=sampler,
        pruner=pruner,
    )
    return study, first


def optuna_run(
    table: Table, space: SearchSpace, method: str, workers: int, repetition: int, limit: float
) -> Curve:
    import optuna

    rungs = len(space.rung_budgets())
    two = len(space.search.objectives) == 2
    study, first = optuna_study(table, space, method, repetition, limit)
    distributions = {n: optuna_distribution(d) for n, d in space.genes.items()}
    vocab = table.vocab_size
    enqueue_initial(study, space, vocab)
    committed = spent = 0.0
    tracker = tracker_for(table, space)
    curve: Curve = []
    events: list[tuple[float, int, Any, dict[str, Any], int, TrialOutcome]] = []
    count = 0

    def start(trial: Any, genes: dict[str, Any], rung: int, now: float) -> bool:
        nonlocal committed, count
        continued = rung > first
        cost = trial_cost(space, genes, rung, continued=continued).tokens or 0
        if committed + cost > limit:
            return False
        committed += cost
        outcome = simulated_outcome(table, space, genes, rung, repetition, now, continued)
        count += 1
        heapq.heappush(events, (outcome.finished, count, trial, genes, rung, outcome))
        return True

    def new_trial(now: float) -> bool:
        trial = study.ask(distributions)
        individual = repair(to_individual(space, trial.params), space, vocab)
        genes = to_genome(space, individual)
        # As in evo's driver, a trial starts only when the budget left can carry it to
        # the top rung.
        to_top = cost_to_top(space, genes, first).tokens or 0
        if committed + to_top <= limit and start(trial, genes, first, now):
            return True
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return False

    for _ in range(workers):
        if not new_trial(0.0):
            break
    while events:
        now, _, trial, genes, rung, outcome = heapq.heappop(events)
        spent += outcome.result.metrics["tokens"]
        value = outcome.result.metric("bits_per_byte")
        tracker.offer(genes, value if rung == rungs - 1 else None)
        curve.append((spent, tracker.true, tracker.observed))
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        elif rung == rungs - 1:
            study.tell(trial, [value, table.params(genes)] if two else value)
        else:
            trial.report(value, rung + 1)
            if not trial.should_prune() and start(trial, genes, rung + 1, now):
                continue
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        new_trial(now)
    return curve


def typical_top_cost(space: SearchSpace, vocab: int) -> float:
    """The mean tokens of training a random genome straight to the top rung."""
    rng = random.Random(0)
    top = len(space.rung_budgets()) - 1
    return statistics.mean(
        trial_cost(
            space,
            to_genome(space, repair(to_individual(space, space.sample(rng)), space, vocab)),
            top,
            continued=False,
        ).tokens
        or 0
        for _ in range(20)
    )


# The methods


def method_space(
    table: Table,
    method: str,
    repetition: int,
    limit: float,
    objectives: int = 1,
    overrides: tuple[str, ...] = (),
) -> SearchSpace:
    """The table's space as `method` searches it, with the repetition's seed."""
    data = apply_overrides(yaml.safe_load(table.space.canonical_yaml()), list(overrides))
    search = data["search"]
    search["seed"] = repetition
    search["objectives"] = ["bits_per_byte", "params"][:objectives]
    search["selection"] = "auto"
    search["budget"] = {"tokens": int(limit)}
    top = table.space.rung_budgets()[-1]
    if method == "random":  # the top rung only
        search["rungs"] = [next(iter(top.values()))]
        search.pop("min_budget", None), search.pop("max_budget", None)
    if method == "evo-generational":  # no rungs: every trial trains at the top budget
        for key in ("rungs", "min_budget", "max_budget", "target"):
            search.pop(key, None)
        data["trial"].update({k: int(v) for k, v in top.items()})
    if method == "evo-generational":
        search["mode"] = "generational"
        search["generations"] = 10_000  # the budget ends it
    return space_from_dict(data, where=method)


@cache
def load_table(path: str) -> Table:
    return Table.load(path)


def run_one(
    path: str,
    method: str,
    repetition: int,
    workers: int,
    limit: float,
    neighbours: int = 3,
    objectives: int = 1,
    overrides: tuple[str, ...] = (),
) -> tuple[Curve, float]:
    """One search; its curve and the share of its trials answered from the table itself."""
    random.seed(repetition)  # what draws from the global stream (repair) is reproducible
    table = load_table(path)
    table.neighbours_k, table.answered, table.exact = neighbours, 0, 0
    space = method_space(table, method, repetition, limit, objectives, overrides)
    if method in OPTUNA:
        curve = optuna_run(table, space, method, workers, repetition, limit)
    else:
        modes = {"evo": "evolution", "evo-generational": "generational"}
        mode = modes.get(method, "evolution" if method in PREDICTED else "random")
        curve = driver_run(table, space, mode, workers, repetition, limit, method)
    return curve, table.exact / max(table.answered, 1)


# Statistics and the report


def main() -> None:
    args = parse_args()
    if args.objectives == 2 and "tpe+hyperband" in args.methods:
        args.methods.remove("tpe+hyperband")
    table = load_table(args.table)
    table.neighbours_k = args.neighbours
    limit = args.budget or float(table.space.search.budget.tokens or 0)
    error = surrogate_error(table)
    print(
        f"table: {error['configurations']:.0f} configurations x {table.seeds} seeds; surrogate "
        f"(each configuration left out, answered by its {args.neighbours} nearest): mean abs "
        f"error {error['mae']:.4f} bits per byte, Spearman {error['spearman']:.2f}; "
        f"seed-to-seed std {error['seed_std']:.4f}, std between configurations "
        f"{error['spread_std']:.4f}"
    )
    started = time.perf_counter()
    context = get_context("spawn")
    curves: dict[str, list[Curve]] = {m: [] for m in args.methods}
    exact: dict[str, list[float]] = {m: [] for m in args.methods}
    with ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        jobs = {
            (m, r): pool.submit(
                run_one,
                args.table,
                m,
                r,
                args.workers,
                limit,
                args.neighbours,
                args.objectives,
                tuple(args.overrides),
            )
            for r in range(args.repetitions)
            for m in args.methods
        }
        for (method, _), job in jobs.items():
            curve, share = job.result()
            curves[method].append(curve)
            exact[method].append(share)
    seconds = time.perf_counter() - started
    print(
        f"{len(args.methods)} methods x {args.repetitions} repetitions, {args.workers} simulated "
        f"worker(s), {limit:,.0f} tokens each: {seconds:.0f} s on {args.processes} processes"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"curves": curves, "exact": exact}))
    shares = {m: float(np.mean(v)) for m, v in exact.items()}
    report(args, table, curves, limit, shares, args.objectives)


def regret_on_grid(
    curve: Curve, grid: np.ndarray, best: float, median: float, worst: float
) -> np.ndarray:
    """Normalized regret of the incumbent at each grid point; before the first top-rung
    result (or with none at all) the regret of the table's worst configuration."""
    quality = on_grid([(t, q) for t, q, _ in curve], grid) if curve else np.full(len(grid), np.inf)
    return (np.where(np.isfinite(quality), quality, worst) - best) / (median - best)


def report(
    args: argparse.Namespace,
    table: Table,
    curves: dict[str, list[Curve]],
    limit: float,
    exact: dict[str, float] | None = None,
    objectives: int = 1,
) -> None:
    means = table.top_mean
    best, median, worst = float(means.min()), float(np.median(means)), float(means.max())
    if objectives == 2:  # the curves hold the hypervolume left out, already in [0, 1]
        best, median, worst = 0.0, 1.0, 1.0
    grid = np.linspace(limit / 50, limit, 50)
    rng = np.random.default_rng(0)
    regret = {
        m: np.array([regret_on_grid(c, grid, best, median, worst) for c in runs])
        for m, runs in curves.items()
    }
    observed = {
        m: np.array([min((o for _, _, o in c), default=math.inf) for c in runs])
        for m, runs in curves.items()
    }
    methods = list(curves)
    ranks = stats.rankdata(np.stack([regret[m] for m in methods]), axis=0).mean(axis=1)
    if objectives == 2:
        print(
            f"hypervolume regret after {limit:,.0f} tokens: the share of the table's "
            f"hypervolume (bits per byte and parameters, reference point "
            f"{table.reference_point().tolist()}) that the top-rung results' true values "
            f"leave out; {args.repetitions} repetitions"
        )
    else:
        print(
            f"normalized regret of the incumbent's true value after {limit:,.0f} tokens "
            f"(0: the table's best, {best:.4f}; 1: its median, {median:.4f}); "
            f"{args.repetitions} repetitions"
        )
    print(
        f"{'method':>17} {'IQM':>7} {'95% interval':>16} {'median':>7} {'mean rank':>9}"
        f" {'p vs evo':>8} {'no result':>9} {'observed':>9} {'exact':>6}"
    )
    intervals = {}
    for i, method in enumerate(methods):
        final = regret[method][:, -1]
        low, high = bootstrap_interval(final, rng)
        intervals[method] = (low, high)
        p = math.nan
        if method != "evo" and "evo" in regret and len(final) > 1:
            differences = regret["evo"][:, -1] - final
            if np.any(differences != 0):
                p = stats.wilcoxon(regret["evo"][:, -1], final).pvalue
        finite = observed[method][np.isfinite(observed[method])]
        print(
            f"{method:>17} {iqm(final):7.3f} [{low:6.3f}, {high:6.3f}] {np.median(final):7.3f}"
            f" {ranks[i, -1]:9.2f} {p:8.3f} {int(np.isinf(observed[method]).sum()):9d}"
            f" {np.median(finite) if len(finite) else math.nan:9.4f}"
            f" {(exact or {}).get(method, math.nan):6.0%}"
        )
    marks = [len(grid) // 4 - 1, len(grid) // 2 - 1, 3 * len(grid) // 4 - 1, len(grid) - 1]
    print("regret IQM (mean rank) as the budget is spent:")
    print(f"{'method':>17} " + " ".join(f"{grid[k] / limit:>14.0%}" for k in marks))
    for i, method in enumerate(methods):
        cells = [f"{iqm(regret[method][:, k]):6.3f} ({ranks[i, k]:4.2f})" for k in marks]
        print(f"{method:>17} " + " ".join(f"{cell:>14}" for cell in cells))
    if "evo" in intervals:
        low, high = intervals["evo"]
        apart = [m for m, (lo, hi) in intervals.items() if m != "evo" and (lo > high or hi < low)]
        print(f"intervals apart from evo's: {', '.join(apart) or 'none'}")
        others = [float(np.median(observed[m])) for m in methods if m != "evo"]
        if others and objectives == 1:
            ratio = float(np.median(observed["evo"])) / min(others)
            print(f"ratio={ratio:.4f} (median observed best, as bench/search_efficiency.py)")
    write_figure(Path(args.html), grid, regret, ranks, methods, rng)
    print(f"anytime curves: {args.html}")


def write_figure(
    path: Path,
    grid: np.ndarray,
    regret: dict[str, np.ndarray],
    ranks: np.ndarray,
    methods: list[str],
    rng: np.random.Generator,
) -> None:
    fig = make_subplots(
        rows=1, cols=2, subplot_titles=("normalized regret (IQM, 95% interval)", "mean rank")
    )
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for i, method in enumerate(methods):
        colour = colours[i % len(colours)]
        middle, low, high = [], [], []
        for column in regret[method].T:
            finite = column[np.isfinite(column)]
            if len(finite) < len(column):  # not every repetition has an incumbent yet
                middle.append(None), low.append(None), high.append(None)
                continue
            lo, hi = bootstrap_interval(finite, rng)
            middle.append(iqm(finite)), low.append(lo), high.append(hi)
        line = {"color": colour}
        fig.add_trace(go.Scatter(x=grid, y=middle, name=method, line=line), row=1, col=1)
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([grid, grid[::-1]]),
                y=high + low[::-1],
                fill="toself",
                fillcolor=colour,
                opacity=0.15,
                line={"width": 0},
                showlegend=False,
                hoverinfo="skip",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Scatter(x=grid, y=ranks[i], name=method, line=line, showlegend=False),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="training tokens spent")
    fig.update_yaxes(title_text="regret (0 = best in table, 1 = median)", row=1, col=1)
    fig.update_yaxes(title_text="rank (1 = best)", row=1, col=2)
    fig.update_layout(title="Search methods replayed against the table", template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fig.write_html(temporary, include_plotlyjs=True)
    temporary.replace(path)


if __name__ == "__main__":
    main()
