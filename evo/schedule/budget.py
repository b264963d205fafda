"""What a search may spend, what it has spent, and whether the next trial still fits."""

from __future__ import annotations

from dataclasses import dataclass, field

from evo.storage import Spent


@dataclass(frozen=True)
class Cost:
    """The training a trial will do: known in steps and tokens for step and token
    budgets, unknown (None) for time budgets."""

    steps: int | None
    tokens: int | None


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
