"""The search loop: a (μ + λ) genetic algorithm over transformer genomes.

Generation 0 is a Latin hypercube of valid genomes; every later generation picks
parents by tournament, breeds as many offspring by crossover and then mutation
(`deap.algorithms.varAnd`), mutates any offspring whose genome was seen before until it
is new, trains them, and keeps the best of parents and offspring (NSGA-II for several
objectives, the best values for one).
After each generation the population and the GA's random state are saved, so a run
killed at any moment resumes from its last complete generation and — with a step or
token budget — goes on exactly as if it had never stopped: trials that finished are
reused, not re-run, and every trial's seed depends only on its genome.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import yaml

from evo.executor import Executor, TrialData, TrialJob, TrialOutcome
from evo.operators import (
    breed,
    distinct,
    make_elite_archive,
    make_logbook,
    make_statistics,
    make_toolbox,
    to_genome,
    to_individual,
    worst_fitness,
)
from evo.space import SearchSpace, space_from_dict
from evo.storage import Storage, TrialRecord, genome_hash
from llm.config import DataConfig
from llm.data import prepare
from llm.errors import UserError
from llm.tokenizer import Tokenizer
from llm.trial import TokenSplits, TrialResult


class SearchView(Protocol):
    """What a live display is told; every method is optional in spirit (see QuietView)."""

    def generation_started(self, generation: int, trials: int) -> None: ...
    def trial_started(self, genes: dict[str, Any], attempt: int) -> None: ...
    def trial_finished(self, genes: dict[str, Any], outcome: TrialOutcome) -> None: ...
    def generation_finished(self, generation: int, stats: dict[str, Any]) -> None: ...


class QuietView:
    def generation_started(self, generation: int, trials: int) -> None:
        pass

    def trial_started(self, genes: dict[str, Any], attempt: int) -> None:
        pass

    def trial_finished(self, genes: dict[str, Any], outcome: TrialOutcome) -> None:
        pass

    def generation_finished(self, generation: int, stats: dict[str, Any]) -> None:
        pass


@dataclass(frozen=True)
class SearchSummary:
    name: str
    generations: int  # generations complete
    trials: int  # trials run by this invocation (reused results not counted)
    best: dict[str, float]  # best value of each objective over successful trials


def space_hash(space: SearchSpace) -> str:
    return hashlib.sha256(space.canonical_yaml().encode()).hexdigest()


def open_run(storage: Storage, name: str, space: SearchSpace) -> bool:
    """Create the run, or check that an existing one has this space; True when it is new."""
    run = storage.get_run(name)
    if run is None:
        storage.create_run(name, space.canonical_yaml(), space.search.seed)
        return True
    if run.space_sha256 != space_hash(space):
        raise UserError(
            f"run {name!r} exists with a different search space; resume it with "
            f"`evo resume {name}`, or start a new run with --new or --name"
        )
    return False


def load_run_space(storage: Storage, name: str) -> SearchSpace:
    run = storage.require_run(name)
    return space_from_dict(yaml.safe_load(run.space_yaml), where=f"run {name!r}")


def prepare_data(space: SearchSpace, progress: bool = False) -> tuple[TrialData, int]:
    """Tokenize the corpora once (cached on disk) and load them into memory for the
    object store; returns the data and the tokenizer's real vocabulary size."""
    pretrain = prepare(space.data_config(), progress=progress)
    tokenizer, limit = pretrain.tokenizer, space.data.max_val_tokens
    adapt = None
    if space.data.adapt is not None:
        config = DataConfig(
            corpus=space.data.adapt.corpus,
            tokenizer=space.data.tokenizer,
            vocab_size=space.data.vocab_size,
            val_fraction=space.data.val_fraction,
        )
        prepared = prepare(config, tokenizer=tokenizer, progress=progress)
        adapt = in_memory(prepared.splits(), tokenizer, limit)
    data = TrialData(in_memory(pretrain.splits(), tokenizer, limit), adapt)
    return data, int(tokenizer.vocab_size)


def in_memory(splits: TokenSplits, tokenizer: Tokenizer, max_val_tokens: int | None) -> TokenSplits:
    """Plain arrays (memory maps are tied to a path other machines of a cluster lack),
    with the validation split cut to its first `max_val_tokens` tokens. The cut part's
    bytes are counted from its decoded text, so bits per byte stays exact."""
    val, val_bytes = splits.val, splits.val_bytes
    if max_val_tokens is not None and len(val) > max_val_tokens:
        val = val[:max_val_tokens]
        val_bytes = len(tokenizer.decode(val.tolist()).encode("utf-8"))
    return TokenSplits(np.array(splits.train), np.array(val), val_bytes)


def trial_seed(run_seed: int, genes: dict[str, Any]) -> int:
    digest = hashlib.sha256(f"{run_seed}:{genome_hash(genes)}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


class Search:
    """One run of the genetic algorithm, recorded in `storage` under `name`."""

    def __init__(
        self,
        space: SearchSpace,
        name: str,
        storage: Storage,
        executor: Executor,
        data: TrialData,
        vocab_size: int,
        view: SearchView | None = None,
    ) -> None:
        self.space, self.name, self.storage, self.executor = space, name, storage, executor
        self.vocab_size = vocab_size
        self.view = view or QuietView()
        self.toolbox = make_toolbox(space, vocab_size)
        self.statistics = make_statistics(space)
        self.logbook = make_logbook(space)
        self.elite = make_elite_archive(space)
        self.trials_run = 0
        self.seen: set[tuple[Any, ...]] = set()  # every genome bred so far, as a tuple
        self._ga_state: Any = None
        executor.load_data(data)

    @contextlib.contextmanager
    def ga_random(self) -> Iterator[None]:
        """DEAP draws from the global `random`; give it a stream of its own, so nothing
        else in the process (Ray's client, a library) can shift the GA's choices."""
        outside = random.getstate()
        random.setstate(self._ga_state)
        try:
            yield
        finally:
            self._ga_state = random.getstate()
            random.setstate(outside)

    def run(self) -> SearchSummary:
        self.storage.requeue_interrupted(self.name)
        self.storage.set_run_status(self.name, "running")
        population, start = self._restore()
        mu, search = self.space.search.population, self.space.search
        for generation in range(start, search.generations):
            if generation == 0:
                with self.ga_random():
                    population = distinct(self.toolbox.population(n=mu), self.toolbox, self.seen)
                self._evaluate(population, 0)
                with self.ga_random():
                    population = self.toolbox.select(population, mu)
            else:
                with self.ga_random():
                    offspring = breed(
                        population,
                        self.toolbox,
                        search.crossover_prob,
                        search.mutation_prob,
                        self.seen,
                    )
                self._evaluate(offspring, generation)
                with self.ga_random():
                    population = self.toolbox.select(population + offspring, mu)
            self._save_generation(generation, population)
        self.storage.set_run_status(self.name, "finished")
        return SearchSummary(self.name, search.generations, self.trials_run, self.best())

    def _restore(self) -> tuple[list[Any], int]:
        last = self.storage.last_generation(self.name)
        if last is None:
            self._ga_state = random.Random(self.space.search.seed).getstate()
            return [], 0
        self._ga_state = last.rng_state
        genomes = self.storage.genomes(self.name)
        # Trials of the unfinished generation are left out: its offspring are bred again.
        self.seen = {
            tuple(to_individual(self.space, genomes[trial.genome_id]))
            for trial in self.storage.trials(self.name)
            if trial.generation <= last.generation
        }
        population = [to_individual(self.space, genomes[gid]) for gid in last.genome_ids]
        self._evaluate(population, last.generation)  # all reused: restores their fitness
        return population, last.generation + 1

    def _evaluate(self, individuals: Sequence[Any], generation: int) -> None:
        """Give every individual a fitness: from a stored trial when its genome has one,
        else by training it (each distinct genome once)."""
        by_genome: dict[int, list[Any]] = {}
        for individual in individuals:
            genes = to_genome(self.space, individual)
            by_genome.setdefault(self.storage.genome_id(self.name, genes), []).append(individual)
        jobs = []
        for genome_id, group in by_genome.items():
            stored = self.storage.finished_result(self.name, genome_id)
            if stored is not None:
                self._assign(group, stored.status, stored)
            else:
                jobs.append(self._job(genome_id, to_genome(self.space, group[0])))
        self.view.generation_started(generation, len(jobs))
        if jobs:
            started = time.time()
            recorder = _TrialRecorder(
                self, generation, {j.genome_id: by_genome[j.genome_id] for j in jobs}
            )
            self.executor.run(jobs, recorder)
            self._utilization = recorder.busy_seconds / (
                self.executor.capacity * max(time.time() - started, 1e-9)
            )
        else:
            self._utilization = None
        self.elite.update(list(individuals))

    def _job(self, genome_id: int, genes: dict[str, Any]) -> TrialJob:
        space = self.space
        return TrialJob(
            genome_id=genome_id,
            model=space.model_config(genes, self.vocab_size),
            train=space.train_config(genes),
            seed=trial_seed(space.search.seed, genes),
            adapt_train=space.adapt_train_config(genes),
            lora_rank=space.lora_rank(genes),
        )

    def _assign(self, group: list[Any], status: str, result: TrialResult | TrialRecord) -> None:
        values = []
        for objective in self.space.search.objectives:
            value = result.metric(objective.metric) if status == "done" else None
            values.append(value)
        fitness = worst_fitness(self.space)
        if all(v is not None for v in values):
            fitness = tuple(float(v) for v in values)  # type: ignore[arg-type]
        for individual in group:
            individual.fitness.values = fitness

    def _save_generation(self, generation: int, population: list[Any]) -> None:
        stats = self.statistics.compile(population)
        self.logbook.record(gen=generation, nevals=self.trials_run, **stats)
        record = {"objectives": stats, "utilization": self._utilization}
        ids = [self.storage.genome_id(self.name, to_genome(self.space, ind)) for ind in population]
        self.storage.save_generation(self.name, generation, ids, self._ga_state, record)
        self.view.generation_finished(generation, record)

    def best(self) -> dict[str, float]:
        best: dict[str, float] = {}
        for objective in self.space.search.objectives:
            values = [
                t.metric(objective.metric)
                for t in self.storage.trials(self.name)
                if t.status == "done" and t.metric(objective.metric) is not None
            ]
            if values:
                pick = min if objective.direction == "min" else max
                best[objective.metric] = pick(v for v in values if v is not None)
        return best


class _TrialRecorder:
    """Records each trial's life in storage and hands fitness back to its individuals."""

    def __init__(self, search: Search, generation: int, groups: dict[int, list[Any]]) -> None:
        self.search, self.generation, self.groups = search, generation, groups
        self.trial_ids: dict[int, int] = {}
        self.retries: dict[int, int] = {}  # genome id → the queued row of its next attempt
        self.busy_seconds = 0.0

    def started(self, job: TrialJob, attempt: int) -> None:
        storage, name = self.search.storage, self.search.name
        trial_id = self.retries.pop(job.genome_id, None)
        if trial_id is None:
            trial_id = storage.add_trial(name, job.genome_id, self.generation, attempt)
        device = "cuda" if self.search.space.trial.resources.gpus > 0 else "cpu"
        storage.mark_running(trial_id, host="", device=device)
        self.trial_ids[job.genome_id] = trial_id
        self.search.view.trial_started(self._genes(job), attempt)

    def retrying(self, job: TrialJob, attempt: int, error: str) -> None:
        # The retry's row is added before the lost attempt is marked failed: a driver that
        # dies in between then leaves an unfinished chain, which a resumed run replays,
        # never a lone failure it would take for the genome's result.
        storage = self.search.storage
        retry_id = storage.add_trial(self.search.name, job.genome_id, self.generation, attempt)
        self.retries[job.genome_id] = retry_id
        failed = TrialResult(status="failed", error=error)
        storage.finish_trial(self.trial_ids[job.genome_id], "failed", failed.to_dict())

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        result = outcome.result
        self.search.storage.finish_trial(
            self.trial_ids[job.genome_id],
            outcome.status,
            result.to_dict(),
            host=outcome.host,
            worker=outcome.worker,
            started=outcome.started,
            finished=outcome.finished,
        )
        self.busy_seconds += outcome.finished - outcome.started
        self.search.trials_run += 1
        self.search._assign(self.groups[job.genome_id], outcome.status, result)
        self.search.view.trial_finished(self._genes(job), outcome)

    def _genes(self, job: TrialJob) -> dict[str, Any]:
        return to_genome(self.search.space, self.groups[job.genome_id][0])
