"""Steady-state asynchronous evolution over a fidelity ladder.

Whenever a worker is free the scheduler makes one decision, with no generation to wait
for: advance a paused genome (one in the top 1/η of its rung, the highest rung first;
see `rungs`), or else breed a new one. The first `population` genomes are a Latin
hypercube of the space (random ones follow while no result is in yet). After that,
parents are chosen by tournament from an aging population: the last `population`
genomes scored at one rung, the highest rung that has at least `min_members` of them,
so parents are compared only at equal budget (small models train faster, and an
asynchronous search must not favour what finishes first). The oldest member leaves as
a new one arrives (regularized evolution, Real et al. 2019). The parents are crossed and
mutated with DEAP's operators (`varAnd`), repaired, and mutated again until the child
is a genome never bred before.

With a target beyond the top rung, every result also goes to the forecast of the target
(`forecast`): the law fitted to the rung scores, refitted when read after a new result,
by which the search's pick is made (`evo.summary.search_order`).

A decision depends only on the results recorded before it, in the order they were
recorded, and on a random stream of its own, drawn from the run's seed and the
decision's number. So `replay` rebuilds the exact state from the stored history, and a
search run one trial at a time is reproducible from its seed, interrupted or not.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deap import algorithms

from evo.operators import distinct, make_toolbox, to_genome, to_individual
from evo.schedule.forecast import TargetForecast
from evo.schedule.rungs import Ladder, RungResults
from evo.space import SearchSpace

Proposer = Literal["evolution", "random"]


UNKNOWN_TRIAL = -1  # an Advance asked about before the trial it would continue has ended


@dataclass(frozen=True)
class Advance:
    """Continue a paused genome from its stable checkpoint to the next rung."""

    genome_id: int
    rung: int  # the rung it trains to
    trial_id: int  # the trial whose checkpoint it continues


@dataclass(frozen=True)
class Breed:
    """Train a new genome at the lowest rung."""

    genes: dict[str, Any]


Decision = Advance | Breed


def min_members(space: SearchSpace) -> int:
    """How many scored genomes a rung needs before parents are drawn from it: half the
    aging population, and never fewer than a tournament."""
    return max(space.search.tournament_size, space.search.population // 2)


@contextlib.contextmanager
def drawing_from(stream: random.Random) -> Iterator[None]:
    """DEAP draws from the global `random`; point it at `stream` for the block, so that
    nothing else in the process (Ray's client, a library) can shift a decision."""
    outside = random.getstate()
    random.setstate(stream.getstate())
    try:
        yield
    finally:
        stream.setstate(random.getstate())
        random.setstate(outside)


class SteadyStateScheduler:
    """The search's state (results per rung, aging populations, paused genomes, every
    genome bred) and the rule that turns it into the next decision."""

    def __init__(
        self,
        space: SearchSpace,
        vocab_size: int,
        ladder: Ladder,
        proposer: Proposer = "evolution",
    ) -> None:
        self.space, self.ladder, self.proposer = space, ladder, proposer
        self.toolbox = make_toolbox(space, vocab_size)
        objectives = space.search.objectives
        rungs = range(len(ladder.budgets))
        self.results = [RungResults(objectives) for _ in rungs]
        self.windows: list[deque[int]] = [deque(maxlen=space.search.population) for _ in rungs]
        self.waiting: list[dict[int, int]] = [{} for _ in rungs]  # genome → trial id
        # Genomes whose trial to a rung has no result yet: each is in flight (or about to
        # run again after an interruption), so waiting for one always ends.
        self.training: list[set[int]] = [set() for _ in rungs]
        self.genes: dict[int, dict[str, Any]] = {}
        self.forecast = TargetForecast.of(space)  # None: the target is the top rung
        self.seen: set[tuple[Any, ...]] = set()
        self.bred = 0
        with drawing_from(random.Random(f"{space.search.seed}:initial")):
            self.initial = self.toolbox.population(n=space.search.population)

    # What happened

    def bred_genome(self, genome_id: int, genes: dict[str, Any]) -> None:
        """A genome was bred (now, or in the history being replayed)."""
        self.genes[genome_id] = genes
        self.seen.add(tuple(to_individual(self.space, genes)))
        self.bred += 1
        self.training[0].add(genome_id)

    def advanced(self, genome_id: int, rung: int) -> None:
        """A genome paused below `rung` was sent on to it."""
        self.waiting[rung - 1].pop(genome_id, None)
        self.training[rung].add(genome_id)

    def result(
        self,
        genome_id: int,
        rung: int,
        trial_id: int,
        values: tuple[float, ...] | None,
        drop: bool = True,
    ) -> list[int]:
        """Record a genome's objective values at a rung (None: it failed). A success below
        the top rung leaves a checkpoint and waits to advance. Returns the trials whose
        checkpoints are no longer needed: genomes dropped for good at this rung (unless
        `drop` is false: a replay that learns the drops from the stored history)."""
        self.results[rung].add(genome_id, values)
        if self.forecast is not None:
            self.forecast.add(genome_id, rung, None if values is None else values[0])
        self.windows[rung].append(genome_id)
        self.training[rung].discard(genome_id)
        waiting = self.waiting[rung]
        if values is not None and rung < self.ladder.top:
            waiting[genome_id] = trial_id
        if not drop or rung == self.ladder.top:
            return []
        dropped = self.ladder.to_drop(self.results[rung], set(waiting))
        return [waiting.pop(genome) for genome in dropped]

    def forget(self, genome_id: int, rung: int) -> None:
        """The genome's checkpoint at `rung` is lost: it cannot advance."""
        self.waiting[rung].pop(genome_id, None)

    # What to do next

    def decide(self, number: int, fits: Callable[[Decision], bool]) -> Decision | None:
        """Decision `number`: the first advance that `fits` the budget, highest rung
        first, else a new genome if that fits. When none does, the budget's end is near:
        what is left goes to the paused genomes nearest the top, best first, in the top
        1/η or not, as a new genome could no longer reach the top rung; but while a
        genome that could be sent on instead is still training to that rung, the choice
        waits for its result (None), as the last of the budget may be its. (Not when the
        space has no new genome left: then the budget may not be ending.) None when
        nothing fits."""
        for rung in reversed(range(self.ladder.top)):
            waiting = self.waiting[rung]
            genome = self.ladder.to_advance(self.results[rung], set(waiting))
            if genome is not None:
                advance = Advance(genome, rung + 1, waiting[genome])
                if fits(advance):
                    return advance
        child = self.breed(random.Random(f"{self.space.search.seed}:{number}"))
        if child is not None and fits(child):
            return child
        for rung in reversed(range(self.ladder.top)):
            waiting = self.waiting[rung]
            if child is not None and any(
                fits(Advance(genome, rung + 1, UNKNOWN_TRIAL)) for genome in self.training[rung]
            ):
                return None
            for genome in self.results[rung].best(len(self.results[rung])):
                if genome in waiting:
                    advance = Advance(genome, rung + 1, waiting[genome])
                    if fits(advance):
                        return advance
        return None

    def breed(self, stream: random.Random) -> Breed | None:
        """A genome never bred before; None when none could be found (a small space is
        exhausted)."""
        with drawing_from(stream):
            if self.bred < len(self.initial):
                child = self.toolbox.clone(self.initial[self.bred])
            elif self.proposer == "random" or not self.windows[0]:
                # With more workers than the initial design, breeding starts before any
                # result is in: there are no parents yet, so it explores at random.
                child = self.toolbox.individual()
            else:
                child = self._offspring()
            (child,) = distinct([child], self.toolbox, set(self.seen))
        if tuple(child) in self.seen:
            return None
        return Breed(to_genome(self.space, child))

    def parent_rung(self) -> int:
        """The highest rung with enough scored genomes to choose parents from."""
        enough = min_members(self.space)
        for rung in reversed(range(len(self.windows))):
            if len(self.windows[rung]) >= enough:
                return rung
        return 0

    def _offspring(self) -> Any:
        rung = self.parent_rung()
        members = []
        for genome in self.windows[rung]:
            individual = to_individual(self.space, self.genes[genome])
            individual.fitness.values = self.results[rung].values(genome)
            members.append(individual)
        search = self.space.search
        parents = self.toolbox.select_parents(members, 2)
        return algorithms.varAnd(
            parents, self.toolbox, search.crossover_prob, search.mutation_prob
        )[0]


@dataclass(frozen=True)
class Event:
    """A past decision or result, as stored, for `replay`."""

    kind: Literal["bred", "advanced", "result"]
    genome_id: int
    rung: int
    trial_id: int
    genes: dict[str, Any] | None = None
    values: tuple[float, ...] | None = None


def replay(scheduler: SteadyStateScheduler, events: Sequence[Event], kept: set[int]) -> None:
    """Apply a run's history, in the order it happened, to a fresh scheduler. Which
    genomes were dropped is not decided again (that would rank a rung once per result):
    a genome still waits when its trial's checkpoint is in `kept`, as the search recorded
    each drop with the result that caused it."""
    for event in events:
        if event.kind == "bred":
            assert event.genes is not None
            scheduler.bred_genome(event.genome_id, event.genes)
        elif event.kind == "advanced":
            scheduler.advanced(event.genome_id, event.rung)
        else:
            scheduler.result(event.genome_id, event.rung, event.trial_id, event.values, drop=False)
    for rung, waiting in enumerate(scheduler.waiting):
        for genome, trial_id in list(waiting.items()):
            if trial_id not in kept:
                scheduler.forget(genome, rung)
