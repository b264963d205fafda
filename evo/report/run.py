"""What every section of the report reads: the run, its space and every trial, with which
of them stalled."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pandas as pd

from evo.report.frames import successful_trials, top_rung_rows
from evo.space import Objective, SearchSpace
from evo.storage import RunInfo, TrialSummary
from evo.summary import SUCCESS, counted

NO_SUCCESS = "No successful trials yet."


@dataclass(frozen=True)
class Run:
    """What the sections read: the run, its space and every trial, with which stalled."""

    info: RunInfo
    space: SearchSpace
    trials: list[TrialSummary]  # Storage.trial_summaries: what evo.summary counts
    frame: pd.DataFrame  # Storage.trials_frame: what the charts draw
    stalled_ids: set[int]  # evo.summary.stalled
    trial_url: str = ""  # a format taking a trial id: where trial ids link to; "" for none

    @functools.cached_property
    def stalled(self) -> pd.Series:
        """Which rows of `frame` stalled."""
        return self.frame["trial_id"].isin(self.stalled_ids)

    @property
    def finished_trials(self) -> list[TrialSummary]:
        """The trials at the top rung, but the stalled ones (of which `finished` is the
        successful), as `evo.summary` reads them."""
        return counted(self.trials, self.space, self.stalled_ids)

    @property
    def objectives(self) -> list[Objective]:
        return self.space.search.objectives

    @property
    def rungs(self) -> bool:
        return len(self.space.rung_budgets()) > 1

    @property
    def learned(self) -> pd.DataFrame:
        """Every trial but the stalled ones: what the charts draw."""
        return self.frame[~self.stalled]

    @property
    def finished(self) -> pd.DataFrame:
        """The successful, not stalled trials at the top rung: the scores that matter."""
        return successful_trials(top_rung_rows(self.learned, self.space), self.objectives)

    @property
    def empty(self) -> str:
        """What a chart of the top rung says when it has no trial to draw: why, when every
        success stalled; that trials learned below the top, when they did."""
        count = int(self.stalled.sum())
        learned_somewhere = (self.learned["status"] == SUCCESS).any()
        if self.rungs and learned_somewhere:
            return "No successful trial at the top rung yet."
        if not count or learned_somewhere:
            return NO_SUCCESS
        return f"No trial has learned yet: {count} succeeded but stalled (see Failures)."

    def empty_at(self, rung: int) -> str:
        """`empty`, for a chart of one rung's trials: trials that learned at other rungs
        do not make "no successful trials" true there."""
        at = self.frame["rung"] == rung
        count = int(self.stalled[at].sum())
        learned = self.frame[at & ~self.stalled]
        if not count or (learned["status"] == SUCCESS).any():
            return NO_SUCCESS
        return (
            f"No trial has learned at rung {rung + 1} yet: {count} succeeded there but "
            "stalled (see Failures)."
        )

    @property
    def where(self) -> str:
        return " at the top rung" if self.rungs else ""
