"""What a search may spend, what it has spent, and whether the next trial still fits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evo.storage import Spent
from llm.errors import ConfigError
from llm.optim import planned_steps

if TYPE_CHECKING:
    from evo.space import SearchSpace


@dataclass(frozen=True)
class Cost:
    """The training a trial will do: known in steps and tokens for step and token
    budgets, unknown (None) for time budgets."""

    steps: int | None
    tokens: int | None


def trial_cost(
    space: SearchSpace, genes: dict[str, Any], rung: int, *, continued: bool = True
) -> Cost:
    """The training a genome's trial at `rung` will do: from the rung below's stable
    checkpoint (from scratch when not `continued`) to this rung's budget, plus the adapt
    stage (when it has a step or token budget)."""
    budgets = space.rung_budgets()
    planned = planned_steps(space.train_config(genes, budgets[rung]))
    if planned is None:
        return Cost(None, None)
    start = 0
    if rung > 0 and continued:
        below = planned_steps(space.train_config(genes, budgets[rung - 1]))
        start = below[0] if below is not None else 0
    steps = planned[1] - start
    tokens = steps * space.train_config(genes).tokens_per_step
    adapt = space.adapt_train_config(genes)
    adapt_planned = planned_steps(adapt) if adapt is not None else None
    if adapt is not None and adapt_planned is not None:
        steps += adapt_planned[1]
        tokens += adapt_planned[1] * adapt.tokens_per_step
    return Cost(steps, tokens)


def cost_to_top(space: SearchSpace, genes: dict[str, Any], rung: int) -> Cost:
    """The training that takes a genome from the rung below `rung` through the top rung:
    its trials at `rung` and at every rung above."""
    costs = [trial_cost(space, genes, r) for r in range(rung, len(space.rung_budgets()))]
    if any(c.steps is None or c.tokens is None for c in costs):
        return Cost(None, None)
    return Cost(sum(c.steps or 0 for c in costs), sum(c.tokens or 0 for c in costs))


def check_budget(space: SearchSpace, genomes: list[dict[str, Any]]) -> None:
    """ConfigError when a steady-state search's budget cannot carry even the cheapest of
    `genomes` (its first ones) to the top rung: no trial would ever start."""
    limits = space.search.budget.limits()
    if space.search.mode != "steady_state" or not genomes:
        return
    costs = [cost_to_top(space, genes, 0) for genes in genomes]
    for unit, limit in (("steps", limits.get("steps")), ("tokens", limits.get("tokens"))):
        known = [getattr(c, unit) for c in costs if getattr(c, unit) is not None]
        needed = min(known, default=None)
        if limit is not None and needed is not None and needed > limit:
            raise ConfigError(
                f"search.budget.{unit}: {limit:,.0f} cannot carry one genome through the rungs "
                f"(the first genomes need {needed:,} {unit} each); raise it or lower the rungs"
            )


@dataclass
class Spending:
    """Compute spent by finished trials, committed to the ones in flight, and the limits
    (`search.budget`): steps, tokens, worker_seconds and trials (decisions)."""

    limits: dict[str, float]
    steps: int = 0
    tokens: int = 0
    worker_seconds: float = 0.0
    decisions: int = 0
    _committed: dict[int, Cost] = field(default_factory=dict)  # by decision

    @classmethod
    def resumed(cls, limits: dict[str, float], spent: Spent) -> Spending:
        return cls(limits, spent.steps, spent.tokens, spent.worker_seconds, spent.trials)

    def allows(self, cost: Cost, running_seconds: float) -> bool:
        """Whether a new decision of this cost stays within every limit, counting what
        the trials in flight will spend (their planned training; their seconds so far).
        An unknown cost (a time budget) counts as nothing: the trial is started while
        the limit is not yet reached. A trial's seconds are never known beforehand, so a
        worker_seconds limit can be passed by the trials in flight."""
        committed_steps = sum(c.steps or 0 for c in self._committed.values())
        committed_tokens = sum(c.tokens or 0 for c in self._committed.values())
        checks = {
            "trials": (self.decisions, 1),
            "steps": (self.steps + committed_steps, cost.steps),
            "tokens": (self.tokens + committed_tokens, cost.tokens),
            "worker_seconds": (self.worker_seconds + running_seconds, None),
        }
        for name, (used, more) in checks.items():
            limit = self.limits.get(name)
            if limit is not None and (used >= limit or used + (more or 0) > limit):
                return False
        return True

    def commit(self, decision: int, cost: Cost, *, counted: bool = False) -> None:
        """A trial of the decision starts; `counted` when the decision was made before (a
        resumed search running it again)."""
        self.decisions += not counted
        self._committed[decision] = cost

    def settle(self, steps: int, tokens: int, seconds: float) -> None:
        """A trial ended (or its worker was lost): count what it really used."""
        self.steps += steps
        self.tokens += tokens
        self.worker_seconds += seconds

    def release(self, decision: int) -> None:
        """The decision has its result: nothing more is committed to it."""
        self._committed.pop(decision, None)

    def fraction(self) -> float:
        """The largest share of a limit used, 0 to 1 (what a progress bar shows)."""
        used = {
            "steps": self.steps,
            "tokens": self.tokens,
            "worker_seconds": self.worker_seconds,
            "trials": self.decisions,
        }
        shares = [used[name] / limit for name, limit in self.limits.items()]
        return min(max(shares, default=0.0), 1.0)
