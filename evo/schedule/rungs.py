"""The fidelity ladder: the budgets a genome is scored at, and which genomes advance.

A new genome trains to the lowest rung and is scored there. Whenever a worker is free,
a genome in the top 1/η of the results at its rung advances: it continues from its
stable checkpoint to the next rung (asynchronous successive halving, Li et al. 2020).
With several objectives, "top" means first by Pareto front, then by crowding distance
within the front (DEAP's non-dominated sort), as multi-objective ASHA does. A genome
that ranks below the top 1/η plus `slack` places is dropped for good: its checkpoint is
deleted, which bounds the disk a run uses.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deap import tools

from evo.operators import FAILED, fitness_class
from evo.space import Objective


class _Ranked(list):  # type: ignore[type-arg]
    """A genome id as a DEAP individual, so that DEAP can sort it by its fitness."""

    fitness: Any


@dataclass
class RungResults:
    """The results recorded at one rung, ranked best first.

    With several objectives the ranking is DEAP's (fronts, then crowding within a front)
    and is kept between results: a newcomer that a member of the last front computed
    dominates cannot change any of those fronts or their crowding, so only a newcomer
    that might join one of them (or a request for more of the ranking) ranks again.
    """

    objectives: Sequence[Objective]
    genomes: list[int] = field(default_factory=list)  # in the order they were recorded
    _values: dict[int, tuple[float, ...]] = field(default_factory=dict)
    _sorted: list[tuple[float, int]] = field(default_factory=list)  # one objective: cost, id
    _individuals: dict[int, _Ranked] = field(default_factory=dict)  # several objectives
    _fronts: list[list[int]] | None = None  # the first fronts, whole, each by crowding

    def __len__(self) -> int:
        return len(self.genomes)

    def add(self, genome_id: int, values: tuple[float, ...] | None) -> None:
        """Record a genome's objective values at this rung (None: the trial failed)."""
        if values is None:
            values = tuple(FAILED * o.sign for o in self.objectives)
        self.genomes.append(genome_id)
        self._values[genome_id] = values
        if len(self.objectives) == 1:
            bisect.insort(self._sorted, (self.objectives[0].sign * values[0], genome_id))
            return
        individual = _Ranked([genome_id])
        individual.fitness = fitness_class(tuple(-o.sign for o in self.objectives))(values)
        self._individuals[genome_id] = individual
        if self._fronts is not None and not self._behind_fronts(individual):
            self._fronts = None

    def values(self, genome_id: int) -> tuple[float, ...]:
        return self._values[genome_id]

    def quota(self, eta: float) -> int:
        """How many of the results are in the top 1/η."""
        return int(len(self) / eta + 1e-9)

    def best(self, k: int) -> list[int]:
        """The k best genomes, best first; ties go to the genome bred first (one
        objective), or follow DEAP's order (several)."""
        if len(self.objectives) == 1:
            return [genome for _, genome in self._sorted[:k]]
        k = min(k, len(self))
        if k <= 0:
            return []
        if self._fronts is None or sum(map(len, self._fronts)) < k:
            self._fronts = self._rank(k)
        return [genome for front in self._fronts for genome in front][:k]

    def _behind_fronts(self, individual: _Ranked) -> bool:
        assert self._fronts  # a ranking of at least one genome
        return any(
            self._individuals[genome].fitness.dominates(individual.fitness)
            for genome in self._fronts[-1]
        )

    def _rank(self, k: int) -> list[list[int]]:
        """Whole fronts, best first, until they hold at least k genomes."""
        fronts: list[list[int]] = []
        for front in tools.sortLogNondominated(list(self._individuals.values()), k):
            tools.emo.assignCrowdingDist(front)
            # Boundary points of a front get infinite distance: they come first.
            ranked = sorted(front, key=lambda ind: -ind.fitness.crowding_dist)
            fronts.append([ind[0] for ind in ranked])
            if sum(map(len, fronts)) >= k:
                break
        return fronts


@dataclass(frozen=True)
class Ladder:
    """The rungs' budgets (TrainConfig fields, lowest first) and the advancing rate η."""

    budgets: list[dict[str, float]]
    eta: float
    slack: int  # places below the top 1/η that keep their checkpoint (the aging window)

    @property
    def top(self) -> int:
        return len(self.budgets) - 1

    def to_advance(self, results: RungResults, waiting: set[int]) -> int | None:
        """The best genome of `waiting` (paused at `rung`, checkpoint kept) in the top 1/η
        of the rung's results, if any."""
        for genome in results.best(results.quota(self.eta)):
            if genome in waiting:
                return genome
        return None

    def to_drop(self, results: RungResults, waiting: set[int]) -> list[int]:
        """The genomes of `waiting` ranked below the top 1/η plus `slack`: they can no
        longer advance, so their checkpoints can go."""
        keep = set(results.best(results.quota(self.eta) + self.slack))
        return sorted(genome for genome in waiting if genome not in keep)
