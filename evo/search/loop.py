"""What both search loops share: the run they record, the best of it, and the life of each
trial as the executor reports it (a loop is the executor's TrialObserver): an attempt
marked running on the trial's device, a lost one kept as retried beside its retry,
queued at once. What a loop does with an outcome is its own (`finished`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from evo.data import TrialData
from evo.executor import Executor, TrialJob, TrialOutcome
from evo.metrics import TrialStatus
from evo.search.trials import SearchSummary
from evo.space import SearchSpace
from evo.storage import Storage
from evo.view import QuietView, SearchView
from llm.trial import CurvePoint


class SearchLoop(ABC):
    """A search of `space` on `executor`, recorded in `storage` under `name`."""

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
        # Where a trial runs, as recorded while it does (its result names the exact device):
        # the space's fixed device, else a GPU when it reserves one. A space may reserve
        # GPUs and still train on the CPU (a simulated cluster's declared GPUs).
        fixed = space.fixed.train.get("device", "auto")
        self.device = fixed if fixed != "auto" else "cuda" if space.trial.resources.gpus else "cpu"
        self.trial_ids: dict[int, int] = {}  # genome id → the row of its attempt in flight
        self.trials_run = 0  # by this invocation (reused results not counted)
        executor.load_data(data)

    @abstractmethod
    def run(self) -> SearchSummary:
        """Search until the space's budget or generations are spent."""

    # What the executor reports

    def started(self, job: TrialJob, attempt: int) -> None:
        trial_id = self._attempt_row(job, attempt)
        self.trial_ids[job.genome_id] = trial_id
        self.storage.mark_running(trial_id, host="", device=self.device)
        self.view.trial_started(self._genes(job), job.rung, attempt)

    def retrying(self, job: TrialJob, attempt: int, error: str) -> None:
        # The lost attempt stays in the history as retried; its retry is queued with it.
        self.trial_ids[job.genome_id] = self.storage.retry_trial(
            self.trial_ids[job.genome_id], error
        )

    def progress(self, job: TrialJob, points: list[CurvePoint]) -> None:
        """A running trial's new curve points: stored at once, for the live views."""
        trial_id = self.trial_ids.get(job.genome_id)
        if trial_id is not None:
            self.storage.add_curve_points(trial_id, points)

    @abstractmethod
    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        """Record the outcome (`self.storage.finish_trial`) and learn from it."""

    @abstractmethod
    def _attempt_row(self, job: TrialJob, attempt: int) -> int:
        """The id of the trial row of the attempt that starts."""

    @abstractmethod
    def _genes(self, job: TrialJob) -> dict[str, Any]:
        """The genes the job trains."""

    # Reading the outcome

    def best(self) -> dict[str, float]:
        """The best value of each objective at the top rung (the budget that matters)."""
        top = len(self.space.rung_budgets()) - 1
        trials = [
            t
            for t in self.storage.trials(self.name)
            if t.rung == top and t.status is TrialStatus.DONE
        ]
        best = {}
        for objective in self.space.search.objectives:
            value = objective.best(t.metric(objective.metric) for t in trials)
            if value == value:  # not NaN: some trial has a value
                best[objective.metric] = value
        return best
