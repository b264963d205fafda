"""A trial's status: the one vocabulary the stack and the search share for a trial's
life. It imports nothing heavy, so that reading a results database needs no torch."""

from __future__ import annotations

import enum


class TrialStatus(str, enum.Enum):
    """Where a trial stands: the one vocabulary of the stack and the search.

    `run_trial` ends a trial DONE, DIVERGED, INVALID or FAILED. The search adds the rest
    of its life: QUEUED and RUNNING before a result, TIMEOUT when it was cancelled,
    RETRIED when its worker was lost and another attempt followed, and INTERRUPTED when
    the search stopped while it ran (a resumed search runs it again).
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    DIVERGED = "diverged"
    INVALID = "invalid"
    FAILED = "failed"
    TIMEOUT = "timeout"
    RETRIED = "retried"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def is_result(self) -> bool:
        """Whether the trial ended with an outcome the search counts (success or failure)."""
        return self in RESULT_STATUSES

    @property
    def is_failure(self) -> bool:
        return self in RESULT_STATUSES and self is not TrialStatus.DONE

    @property
    def is_active(self) -> bool:
        return self in (TrialStatus.QUEUED, TrialStatus.RUNNING)


RESULT_STATUSES = frozenset(
    {
        TrialStatus.DONE,
        TrialStatus.DIVERGED,
        TrialStatus.INVALID,
        TrialStatus.FAILED,
        TrialStatus.TIMEOUT,
    }
)
