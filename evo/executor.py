"""Where trials run: in this process (`LocalExecutor`) or as Ray tasks (`RayExecutor`).

Both take a generation's jobs and report each trial's start, retries and outcome to an
observer as they happen, so the driver can record them. Failures are classified here:
a worker that dies or a lost node is retried (up to `retries`); an invalid genome,
divergence, out-of-memory or a timeout is final and becomes the trial's outcome. The
training data go through Ray's object store once (`ray.put`) and reach every worker
from there, never through a shared filesystem.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from llm.config import ModelConfig, TrainConfig
from llm.errors import UserError
from llm.trial import AdaptSpec, TokenSplits, TrialResult, TrialSpec, first_line, run_trial

if TYPE_CHECKING:
    from evo.space import SearchSpace

log = logging.getLogger(__name__)

# A TrialResult status, as the storage records it.
STORED_STATUS = {"ok": "done", "diverged": "diverged", "invalid": "invalid", "failed": "failed"}


@dataclass(frozen=True)
class TrialJob:
    """One genome to train and evaluate, with everything but the data."""

    genome_id: int
    model: ModelConfig
    train: TrainConfig
    seed: int
    adapt_train: TrainConfig | None = None
    lora_rank: int = 0


@dataclass(frozen=True)
class TrialData:
    pretrain: TokenSplits
    adapt: TokenSplits | None = None


@dataclass(frozen=True)
class TrialOutcome:
    result: TrialResult
    status: str  # as stored: done, failed, timeout, invalid or diverged
    host: str
    worker: str
    started: float  # seconds since the epoch, measured where the trial ran
    finished: float


class TrialObserver(Protocol):
    def started(self, job: TrialJob, attempt: int) -> None: ...
    def retrying(self, job: TrialJob, attempt: int, error: str) -> None: ...
    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None: ...


def execute_job(job: TrialJob, data: TrialData) -> TrialOutcome:
    """Run one trial where this function is called (a Ray worker or the driver itself)."""
    started = time.time()
    adapt = None
    if job.adapt_train is not None and data.adapt is not None:
        adapt = AdaptSpec(data=data.adapt, train=job.adapt_train, lora_rank=job.lora_rank)
    spec = TrialSpec(
        model=job.model,
        train=job.train,
        data=data.pretrain,
        seed=job.seed,
        adapt=adapt,
    )
    result = run_trial(spec)
    return TrialOutcome(
        result=result,
        status=STORED_STATUS[result.status],
        host=socket.gethostname(),
        worker=f"pid-{os.getpid()}",
        started=started,
        finished=time.time(),
    )


def failed_outcome(status: str, error: str, started: float) -> TrialOutcome:
    now = time.time()
    result = TrialResult(status="failed", error=error, wall_seconds=now - started)
    return TrialOutcome(result, status, host="", worker="", started=started, finished=now)


class Executor(ABC):
    capacity: int  # trials that can run at once

    @abstractmethod
    def load_data(self, data: TrialData) -> None:
        """Make the data available to every future trial (once per search)."""

    @abstractmethod
    def run(self, jobs: Sequence[TrialJob], observer: TrialObserver) -> None:
        """Run every job to an outcome, reporting to `observer` as trials start and end."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the executor holds."""


class LocalExecutor(Executor):
    """One trial at a time in this process: for debugging, and tests that need no parallelism.

    No timeout is enforced here: a trial is bounded by its own budget.
    """

    capacity = 1

    def __init__(self) -> None:
        self._data: TrialData | None = None

    def load_data(self, data: TrialData) -> None:
        self._data = data

    def run(self, jobs: Sequence[TrialJob], observer: TrialObserver) -> None:
        assert self._data is not None, "load_data first"
        for job in jobs:
            observer.started(job, 0)
            observer.finished(job, execute_job(job, self._data))


@dataclass
class _InFlight:
    job: TrialJob
    attempt: int
    dispatched: float


class RayExecutor(Executor):
    """Trials as Ray tasks, each with the space's resources; at most `capacity` in flight,
    so a trial's timeout counts from when it really starts and no worker waits while
    jobs remain."""

    def __init__(
        self,
        *,
        cpus: float,
        gpus: float,
        timeout_s: float,
        retries: int,
        address: str | None = None,
        task: Callable[[TrialJob, TrialData], TrialOutcome] = execute_job,
    ) -> None:
        import ray

        self._ray = ray
        if not ray.is_initialized():
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        self.timeout_s, self.retries, self.gpus = timeout_s, retries, gpus
        self.capacity = cluster_capacity(ray.cluster_resources(), cpus, gpus)
        self._remote = ray.remote(task).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False
        )
        self._threads = max(1, int(cpus))
        self._data_ref: Any = None

    def load_data(self, data: TrialData) -> None:
        self._data_ref = self._ray.put(data)

    def run(self, jobs: Sequence[TrialJob], observer: TrialObserver) -> None:
        pending = list(jobs)[::-1]
        in_flight: dict[Any, _InFlight] = {}
        try:
            while pending or in_flight:
                while pending and len(in_flight) < self.capacity:
                    self._dispatch(pending.pop(), 0, in_flight, observer)
                done, _ = self._ray.wait(list(in_flight), num_returns=1, timeout=1.0)
                for ref in done:
                    self._collect(ref, in_flight, pending, observer)
                self._expire(in_flight, observer)
        finally:
            for ref in in_flight:
                self._ray.cancel(ref, force=True)

    def _dispatch(
        self, job: TrialJob, attempt: int, in_flight: dict[Any, _InFlight], observer: TrialObserver
    ) -> None:
        job_here = replace(job, train=replace(job.train, threads=self._threads))
        ref = self._remote.remote(job_here, self._data_ref)
        in_flight[ref] = _InFlight(job, attempt, time.time())
        observer.started(job, attempt)

    def _collect(
        self,
        ref: Any,
        in_flight: dict[Any, _InFlight],
        pending: list[TrialJob],
        observer: TrialObserver,
    ) -> None:
        from ray import exceptions as rx

        flight = in_flight.pop(ref)
        try:
            observer.finished(flight.job, self._ray.get(ref))
        except rx.OutOfMemoryError as err:
            error = f"out of memory: killed by Ray's memory monitor ({first_line(err)})"
            observer.finished(flight.job, failed_outcome("failed", error, flight.dispatched))
        except (
            rx.WorkerCrashedError,
            rx.NodeDiedError,
            rx.ObjectLostError,
            rx.RaySystemError,
        ) as err:
            error = f"worker lost: {type(err).__name__}: {first_line(err)}"
            if flight.attempt < self.retries:
                observer.retrying(flight.job, flight.attempt + 1, error)
                self._dispatch(flight.job, flight.attempt + 1, in_flight, observer)
            else:
                error += f" (after {flight.attempt + 1} attempts)"
                observer.finished(flight.job, failed_outcome("failed", error, flight.dispatched))
        except rx.RayTaskError as err:  # run_trial catches its own errors; this is a bug
            cause = err.cause or err
            error = f"trial raised {type(cause).__name__}: {first_line(cause)}"
            observer.finished(flight.job, failed_outcome("failed", error, flight.dispatched))

    def _expire(self, in_flight: dict[Any, _InFlight], observer: TrialObserver) -> None:
        now = time.time()
        for ref, flight in list(in_flight.items()):
            if now - flight.dispatched > self.timeout_s:
                self._ray.cancel(ref, force=True)
                del in_flight[ref]
                error = f"timed out after {self.timeout_s:g} s"
                observer.finished(flight.job, failed_outcome("timeout", error, flight.dispatched))

    def close(self) -> None:
        self._data_ref = None


def cluster_capacity(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials with these resources fit on the cluster at once."""
    fits = [resources.get("CPU", 0.0) / cpus] if cpus > 0 else []
    if gpus > 0:
        fits.append(resources.get("GPU", 0.0) / gpus)
    capacity = int(min(fits, default=1.0) + 1e-9)
    if capacity < 1:
        raise UserError(
            f"no trial fits on the Ray cluster: a trial needs {cpus:g} CPUs and {gpus:g} GPUs, "
            f"the cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
            " (lower trial.resources in the space)"
        )
    return capacity


def make_executor(space: SearchSpace, *, local: bool, address: str | None = None) -> Executor:
    """The executor for a search of `space`: in this process when `local`, else Ray tasks
    with the space's resources, timeout and retries on the cluster at `address` (None:
    `$RAY_ADDRESS`, or a local Ray instance)."""
    if local:
        return LocalExecutor()
    resources = space.trial.resources
    return RayExecutor(
        cpus=resources.cpus,
        gpus=resources.gpus,
        timeout_s=space.trial.timeout_s,
        retries=space.trial.retries,
        address=address or os.environ.get("RAY_ADDRESS"),
    )
