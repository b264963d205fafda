"""The generational mode (`search.mode: generational`): a (μ + λ) genetic algorithm.

Generation 0 is a Latin hypercube of valid genomes; every later generation picks
parents by tournament, breeds as many offspring by crossover and then mutation
(`deap.algorithms.varAnd`), mutates any offspring whose genome was seen before until it
is new, trains them all at the trial's budget, and keeps the best of parents and
offspring (NSGA-II for several objectives, the best values for one). Workers wait at
the end of each generation for its slowest trial; the steady-state mode does not.

After each generation the population and the GA's random state are saved, so a run
killed at any moment resumes from its last complete generation and — with a step or
token budget — goes on exactly as if it had never stopped: trials that finished are
reused, not re-run, and every trial's seed depends only on its genome.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from evo.data import TrialData
from evo.executor import Executor, TrialJob, TrialOutcome
from evo.metrics import TrialStatus
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
from evo.search.loop import SearchLoop
from evo.search.trials import SearchSummary, make_job, objective_values
from evo.space import SearchSpace
from evo.storage import RunStatus, Storage, TrialRecord
from evo.view import SearchView
from llm.trial import TrialResult


@dataclass
class _Evaluation:
    """The trials of one generation being trained."""

    generation: int
    groups: dict[int, list[Any]]  # genome id → the individuals it gives a fitness to
    started: float  # seconds since the epoch
    busy_seconds: float = 0.0  # the workers' time its trials took
    done: int = 0  # trials finished


class GenerationalSearch(SearchLoop):
    """One run of the generational algorithm, recorded in `storage` under `name`."""

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
        super().__init__(space, name, storage, executor, data, vocab_size, view)
        self.toolbox = make_toolbox(space, vocab_size)
        self.statistics = make_statistics(space)
        self.logbook = make_logbook(space)
        self.elite = make_elite_archive(space)
        self.seen: set[tuple[Any, ...]] = set()  # every genome bred so far, as a tuple
        self._ga_state: Any = None
        self._utilization: float | None = None
        self._evaluation: _Evaluation | None = None

    @property
    def generations(self) -> int:
        assert self.space.search.generations is not None  # set for this mode
        return self.space.search.generations

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
        self.storage.interrupt_active(self.name)
        # A resumed run's best so far is the run's, not only what this process trains.
        self.view.earlier_results(self.storage.trials(self.name))
        self.storage.set_run_status(self.name, RunStatus.RUNNING)
        session = self.storage.start_session(self.name, self.executor.capacity)
        try:
            done = self._generations()
        finally:
            self.storage.end_session(session)
        self.storage.set_run_status(self.name, RunStatus.FINISHED)
        detail = f"{done} generations"
        return SearchSummary(self.name, self.trials_run, self.best(), detail)

    def _generations(self) -> int:
        """Run the generations left; returns how many are complete."""
        population, start = self._restore()
        mu, search = self.space.search.population, self.space.search
        limits = search.budget.limits()
        for generation in range(start, self.generations):
            if limits and self._spent_out(limits):
                return generation
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
        return self.generations

    def _spent_out(self, limits: dict[str, float]) -> bool:
        spent = self.storage.spent(self.name)
        return any(spent.of(name) >= limit for name, limit in limits.items())

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
            if trial.generation is not None and trial.generation <= last.generation
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
                genes = to_genome(self.space, group[0])
                jobs.append(make_job(self.space, self.vocab_size, genome_id, genes))
        self.view.progress(f"generation {generation + 1}/{self.generations}", 0, max(len(jobs), 1))
        if jobs:
            groups = {j.genome_id: by_genome[j.genome_id] for j in jobs}
            self._evaluation = evaluation = _Evaluation(generation, groups, time.time())
            self.executor.run(jobs, self)
            self._utilization = evaluation.busy_seconds / (
                self.executor.capacity * max(time.time() - evaluation.started, 1e-9)
            )
        else:
            self._utilization = None
        self.elite.update(list(individuals))

    def _assign(
        self, group: list[Any], status: TrialStatus, result: TrialResult | TrialRecord
    ) -> None:
        values = objective_values(self.space, status, result)
        fitness = worst_fitness(self.space) if values is None else values
        for individual in group:
            individual.fitness.values = fitness

    def _save_generation(self, generation: int, population: list[Any]) -> None:
        stats = self.statistics.compile(population)
        self.logbook.record(gen=generation, nevals=self.trials_run, **stats)
        record = {"objectives": stats, "utilization": self._utilization}
        ids = [self.storage.genome_id(self.name, to_genome(self.space, ind)) for ind in population]
        self.storage.save_generation(self.name, generation, ids, self._ga_state, record)
        self.view.note(f"generation {generation} done")

    # What the executor reports

    def _attempt_row(self, job: TrialJob, attempt: int) -> int:
        assert self._evaluation is not None  # the executor runs a generation's jobs
        trial_id = self.trial_ids.get(job.genome_id) if attempt else None
        if trial_id is None:
            trial_id = self.storage.add_trial(
                self.name,
                job.genome_id,
                generation=self._evaluation.generation,
                budget=self.space.rung_budgets()[0],
                seed=job.seed,
            )
        return trial_id

    def _genes(self, job: TrialJob) -> dict[str, Any]:
        assert self._evaluation is not None
        return to_genome(self.space, self._evaluation.groups[job.genome_id][0])

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        evaluation = self._evaluation
        assert evaluation is not None
        self.storage.finish_trial(self.trial_ids.pop(job.genome_id), outcome)
        evaluation.busy_seconds += outcome.finished - outcome.started
        self.trials_run += 1
        evaluation.done += 1
        self._assign(evaluation.groups[job.genome_id], outcome.status, outcome.result)
        self.view.trial_finished(self._genes(job), job.rung, outcome)
        self.view.progress(
            f"generation {evaluation.generation + 1}/{self.generations}",
            evaluation.done,
            len(evaluation.groups),
        )
