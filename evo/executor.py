"""Where trials run: in this process (`LocalExecutor`) or as Ray tasks (`RayExecutor`).

An executor takes jobs one at a time (`submit`) while it has a free worker, and `wait`
returns as soon as at least one has ended, after reporting each trial's start, retries
and outcome to an observer, so the driver can record them and choose the next job at
once: no worker waits for a batch to fill. When fewer jobs are left than workers, the
idle workers' cores are lent to the trials still running (`CoreLending`). Failures are
classified here: a worker that dies or a lost node is retried (up to `retries`); an
invalid genome, divergence, out-of-memory or a timeout is final and becomes the
trial's outcome. The training data go through Ray's object store once (`ray.put`);
workers read and write the checkpoints of paused trials in the run's checkpoint store
(`evo.checkpoints`) themselves, so they never pass through the driver.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from evo.checkpoints import CheckpointStore
from evo.data import TrialData
from evo.metrics import TrialStatus
from llm.config import ModelConfig, TrainConfig
from llm.errors import UserError
from llm.trial import (
    WARMUP_STEPS,
    AdaptSpec,
    CurvePoint,
    TrialEnd,
    TrialResult,
    TrialSpec,
    first_line,
    run_trial,
)

if TYPE_CHECKING:
    from evo.space import SearchSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialJob:
    """One training of a genome at a rung, with everything but the data."""

    genome_id: int
    model: ModelConfig
    train: TrainConfig  # its budget is the rung's
    seed: int
    adapt_train: TrainConfig | None = None
    lora_rank: int = 0
    quantize: str | None = None  # the adapt stage's storage of frozen weights (QLoRA)
    rung: int = 0
    resume: str | None = None  # the stable checkpoint of the rung below, to continue
    keep_stable: bool = False  # publish this rung's stable checkpoint (a rung follows)
    checkpoints: CheckpointStore | None = None  # where `resume` is and the stable one goes
    lend_file: str | None = None  # where the threads lent to the trial are posted
    progress: CurveChannel | None = None  # where it sends its curve while it trains


@dataclass(frozen=True)
class TrialOutcome:
    result: TrialResult
    status: TrialStatus  # the result's, or TIMEOUT
    host: str
    worker: str
    started: float  # seconds since the epoch, measured where the trial ran
    finished: float
    checkpoint: str | None = None  # the stable checkpoint published, when the job asked
    lent_seconds: float = 0.0  # idle workers' time lent to it (`LentThreads`)


class TrialObserver(Protocol):
    def started(self, job: TrialJob, attempt: int) -> None: ...
    def retrying(self, job: TrialJob, attempt: int, error: str) -> None: ...
    def progress(self, job: TrialJob, points: list[CurvePoint]) -> None: ...
    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None: ...


PROGRESS_SECONDS = 2.0  # a running trial sends its new curve points at most this often


class CurveChannel(Protocol):
    """How a running trial's curve points reach the driver: a Ray queue from a worker
    (`QueueChannel`), a direct call in this process (`CallChannel`)."""

    def send(self, points: list[CurvePoint]) -> None: ...


@dataclass(frozen=True)
class CallChannel:
    """A trial in the driver's own process (`LocalExecutor`) reports to the observer."""

    job: TrialJob
    observer: TrialObserver

    def send(self, points: list[CurvePoint]) -> None:
        self.observer.progress(self.job, points)


@dataclass(frozen=True)
class QueueChannel:
    """A trial on a Ray worker puts its points on the executor's queue, tagged with its
    dispatch (`RayExecutor` drains the queue while it waits, and drops the points of a
    dispatch no longer in flight: a lost worker's, a timed-out trial's)."""

    queue: Any  # ray.util.queue.Queue
    dispatch: int

    def send(self, points: list[CurvePoint]) -> None:
        self.queue.put_nowait((self.dispatch, points))


class CurveSender:
    """A trial's side of its live curve (the TrialSpec's `on_point`): the points its
    training records, sent on through `channel` at most every PROGRESS_SECONDS. The
    curve is only a view of a running trial (its result brings the whole curve): a point
    that cannot be sent is dropped, never the trial's failure."""

    def __init__(self, channel: CurveChannel) -> None:
        self.channel = channel
        self.pending: list[CurvePoint] = []
        self.sent_at = time.monotonic()

    def __call__(self, point: CurvePoint) -> None:
        self.pending.append(point)
        now = time.monotonic()
        if now - self.sent_at < PROGRESS_SECONDS:
            return
        points, self.pending, self.sent_at = self.pending, [], now
        try:
            self.channel.send(points)
        except Exception as err:  # the queue's actor gone, the driver stopping
            log.warning("evo: a running trial's curve points were not sent: %s", first_line(err))


TRIAL_FOLDER_PREFIX = "evo-trial-"


def execute_job(job: TrialJob, data: TrialData) -> TrialOutcome:
    """Run one trial where this function is called (a Ray worker or the driver itself)."""
    started = time.time()
    remove_orphans(Path(tempfile.gettempdir()))
    prefix = f"{TRIAL_FOLDER_PREFIX}{os.getpid()}-"
    own = job.train.threads
    lent = LentThreads(Path(job.lend_file), own) if job.lend_file and own else None
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        try:
            continue_from = _fetch_resume(job, Path(folder) / "from")
        except OSError as err:
            return failed_outcome(TrialStatus.FAILED, first_line(err), started)
        stable = Path(folder) / "stable" if job.keep_stable else None
        adapt = None
        if job.adapt_train is not None and data.adapt is not None:
            adapt = AdaptSpec(
                data=data.adapt,
                train=job.adapt_train,
                lora_rank=job.lora_rank,
                quantize=job.quantize,
            )
        spec = TrialSpec(
            model=job.model,
            train=job.train,
            data=data.pretrain,
            seed=job.seed,
            adapt=adapt,
            continue_from=None if continue_from is None else str(continue_from),
            save_stable=None if stable is None else str(stable),
            before_step=() if lent is None else (lent,),
            on_point=None if job.progress is None else CurveSender(job.progress),
        )
        result = run_trial(spec)
        checkpoint = None
        if stable is not None and stable.is_dir() and result.status is TrialEnd.DONE:
            try:
                checkpoint = _publish_stable(job, stable)
            except OSError as err:
                return failed_outcome(TrialStatus.FAILED, first_line(err), started)
    return TrialOutcome(
        result=result,
        status=search_status(result.status),
        host=socket.gethostname(),
        worker=worker_name(),
        started=started,
        finished=time.time(),
        checkpoint=checkpoint,
        lent_seconds=0.0 if lent is None else lent.lent_seconds,
    )


def _fetch_resume(job: TrialJob, folder: Path) -> Path | None:
    """The checkpoint the job continues, downloaded into `folder`; None if it starts anew."""
    if job.resume is None:
        return None
    if job.checkpoints is None:
        raise ValueError("a job that continues a checkpoint needs the store it is in")
    try:
        return job.checkpoints.download(job.resume, folder)
    except OSError as err:
        raise OSError(f"cannot read the checkpoint it continues: {first_line(err)}") from err


def _publish_stable(job: TrialJob, stable: Path) -> str:
    """Publish the trial's stable checkpoint in the run's store; returns its name there."""
    if job.checkpoints is None:
        raise ValueError("a job that keeps its stable checkpoint needs a store for it")
    name = CheckpointStore.name(job.genome_id, job.rung)
    try:
        job.checkpoints.upload(name, stable)
    except OSError as err:
        where = job.checkpoints.url
        raise OSError(f"cannot write its checkpoint to {where}: {first_line(err)}") from err
    return name


def worker_name() -> str:
    """The process that ran a trial: its pid, and on Ray the node too (`node-` and the
    first 8 hex digits of its id), since several nodes can share one host."""
    ray = sys.modules.get("ray")  # never imported for it: a local trial has no node
    if ray is not None and ray.is_initialized():
        return f"node-{ray.get_runtime_context().get_node_id()[:8]}/pid-{os.getpid()}"
    return f"pid-{os.getpid()}"


LENDING_FILE_PREFIX = "evo-lend-"


class CoreLending:
    """The driver's side of lending idle workers' cores. At the end of a budget (or of a
    generation) fewer trials run than there are workers, and each idle worker's core
    would wait for the last trials; instead the trials still running are told to train
    with the idle cores' threads too, so they end sooner. Shared through a small file,
    so this works only where the trials run on the driver's machine (POSIX: the file is
    replaced while trials may be reading it)."""

    def __init__(self, threads: int, capacity: int, folder: Path | None = None) -> None:
        self.threads, self.capacity = threads, capacity
        parent = folder or Path(tempfile.gettempdir())
        remove_orphans(parent, LENDING_FILE_PREFIX)
        prefix = f"{LENDING_FILE_PREFIX}{os.getpid()}-"
        handle, name = tempfile.mkstemp(prefix=prefix, suffix=".txt", dir=parent)
        os.close(handle)
        self.path = Path(name)
        # Removed by close(), or when this object is collected or the process exits, so
        # that an executor nobody closed (a script, a test) leaves nothing behind.
        self._remove = weakref.finalize(self, self.path.unlink, missing_ok=True)
        self.posted = 0
        self.share(capacity)

    def share(self, in_flight: int) -> None:
        """Post each running trial's share of the cores: its own threads, and those of
        the idle workers divided among the `in_flight` trials (rounded down: with three
        workers and two trials left, the third core is not split)."""
        cores = self.threads * self.capacity
        per_trial = min(cores // max(in_flight, 1), _usable_cores() or cores)
        if per_trial != self.posted:
            partial = self.path.with_name(self.path.name + ".partial")
            partial.write_text(str(per_trial))
            partial.replace(self.path)
            self.posted = per_trial

    def close(self) -> None:
        self._remove()


def _usable_cores() -> int | None:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


class LentThreads:
    """A trial's side of `CoreLending`: a hook of its Trainer (`before_step`) that sets
    torch's thread count before each step to what the driver posted. The first
    `own_steps` steps of the trial always run with its own threads, so that its
    throughput (the median step time after `WARMUP_STEPS`, over the steps at its own
    thread count) is measured as configured even for a trial started alone.
    `lent_seconds` adds up the borrowed cores' time, in worker-seconds."""

    def __init__(
        self,
        path: Path,
        own: int,
        *,
        own_steps: int = WARMUP_STEPS + 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.own, self.own_steps, self.clock = path, own, own_steps, clock
        self.current = own
        self.first_step: int | None = None
        self.lent_seconds = 0.0
        self._last = clock()

    def __call__(self, step: int) -> None:
        threads = self.threads(step)
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)

    def threads(self, step: int) -> int:
        """The threads to train step number `step` with (steps are numbered from where
        the trial started: a continued trial's first step is not 1)."""
        now = self.clock()
        self.lent_seconds += (self.current - self.own) / self.own * (now - self._last)
        self._last = now
        if self.first_step is None:
            self.first_step = step
        if step - self.first_step >= self.own_steps:
            # Read at every step: a share lowered for a new trial must reach this one
            # before the newcomer's throughput is timed.
            self.current = max(self._posted(), self.own)
        return self.current

    def _posted(self) -> int:
        try:
            return int(self.path.read_text())
        except (OSError, ValueError):  # not posted (yet), or the search has ended
            return self.own


def remove_orphans(parent: Path, prefix: str = TRIAL_FOLDER_PREFIX) -> None:
    """Delete what processes left in `parent` under names `PREFIX<pid>-…` when the process
    is gone: trial folders (each holding a checkpoint to continue and the one being
    written) of a worker killed with -9 or by the memory monitor, which cannot clean up
    after itself, so a long search on a cluster would fill its nodes' temporary space;
    and the lending files of a killed driver. POSIX only: elsewhere signal 0 is not a
    harmless probe."""
    if os.name != "posix":
        return
    for path in parent.glob(f"{prefix}*-*"):
        pid = path.name.removeprefix(prefix).split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def search_status(end: TrialEnd) -> TrialStatus:
    """Where a trial that `run_trial` ended stands in the search: the same word."""
    return TrialStatus(end.value)


def failed_outcome(status: TrialStatus, error: str, started: float) -> TrialOutcome:
    now = time.time()
    result = TrialResult(status=TrialEnd.FAILED, error=error)
    result.metrics["wall_seconds"] = now - started
    return TrialOutcome(result, status, host="", worker="", started=started, finished=now)


class Executor(ABC):
    capacity: int  # trials that can run at once

    @abstractmethod
    def load_data(self, data: TrialData) -> None:
        """Make the data available to every future trial (once per search)."""

    @property
    @abstractmethod
    def in_flight(self) -> int:
        """Jobs submitted that have not ended yet."""

    @abstractmethod
    def submit(self, job: TrialJob, observer: TrialObserver) -> None:
        """Start a job on a free worker (call only while in_flight < capacity)."""

    @abstractmethod
    def wait(self, observer: TrialObserver) -> None:
        """Block until at least one job in flight has ended, reporting to `observer`."""

    def lend_idle_workers(self) -> None:  # noqa: B027 (optional hook)
        """Let the trials in flight use the cores of the workers left idle, if any (call
        before `wait`, once every job that can start now has been submitted)."""

    def cancel(self) -> None:  # noqa: B027 (optional hook)
        """Stop every job in flight without reporting it."""

    def hosts(self) -> set[str]:
        """The machines trials may run on."""
        return {socket.gethostname()}

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release what the executor holds."""

    def run(self, jobs: Sequence[TrialJob], observer: TrialObserver) -> None:
        """Run every job to an outcome, keeping every worker busy while jobs remain."""
        pending = list(jobs)[::-1]
        try:
            while pending or self.in_flight:
                while pending and self.in_flight < self.capacity:
                    self.submit(pending.pop(), observer)
                self.lend_idle_workers()
                self.wait(observer)
        finally:
            self.cancel()


class LocalExecutor(Executor):
    """One trial at a time in this process: for debugging, exactly reproducible searches,
    and tests that need no parallelism. No timeout is enforced here: a trial is bounded
    by its own budget."""

    capacity = 1

    def __init__(self) -> None:
        self._data: TrialData | None = None
        self._queue: list[TrialJob] = []

    def load_data(self, data: TrialData) -> None:
        self._data = data

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def submit(self, job: TrialJob, observer: TrialObserver) -> None:
        self._queue.append(job)

    def wait(self, observer: TrialObserver) -> None:
        assert self._data is not None, "load_data first"
        job = self._queue[0]
        observer.started(job, 0)
        outcome = execute_job(replace(job, progress=CallChannel(job, observer)), self._data)
        self._queue.pop(0)
        observer.finished(job, outcome)

    def cancel(self) -> None:
        self._queue.clear()


@dataclass
class _InFlight:
    job: TrialJob
    attempt: int
    dispatched: float
    number: int  # of its dispatch, which its curve points name (`QueueChannel`)


class RayExecutor(Executor):
    """Trials as Ray tasks, each with the space's resources; at most `capacity` in flight,
    so a trial's timeout counts from when it really starts. The capacity follows the
    cluster: after each `wait` it is what the nodes alive then can hold, so a node that
    joins gets trials and a lost node's share is not queued behind the others."""

    def __init__(
        self,
        *,
        cpus: float,
        gpus: float,
        timeout_s: float,
        retries: int,
        address: str | None = None,
        lend_cores: bool = True,
        task: Callable[[TrialJob, TrialData], TrialOutcome] = execute_job,
    ) -> None:
        """`lend_cores`: lend idle workers' cores to the trials still running
        (`CoreLending`) where that can work: CPU trials, a one-machine POSIX cluster."""
        import ray

        self._ray = ray
        if not ray.is_initialized():
            _quiet_ray_default_auth_notice()
            ray.init(
                address=address,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        self.timeout_s, self.retries, self.cpus, self.gpus = timeout_s, retries, cpus, gpus
        self.capacity = cluster_capacity(ray.cluster_resources(), cpus, gpus)
        self._remote = ray.remote(task).options(
            num_cpus=cpus, num_gpus=gpus, max_retries=0, retry_exceptions=False
        )
        self._threads = max(1, int(cpus))
        self._data_ref: Any = None
        self._flights: dict[Any, _InFlight] = {}
        self._dispatches = 0
        self._curves = _curve_queue(ray)
        self._lending = (
            CoreLending(self._threads, self.capacity)
            if lend_cores and gpus == 0 and os.name == "posix" and _on_this_machine(ray.nodes())
            else None
        )

    def load_data(self, data: TrialData) -> None:
        self._data_ref = self._ray.put(data)

    def hosts(self) -> set[str]:
        return {node["NodeManagerHostname"] for node in self._ray.nodes() if node.get("Alive")}

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def submit(self, job: TrialJob, observer: TrialObserver) -> None:
        self._dispatch(job, 0, observer)

    def wait(self, observer: TrialObserver) -> None:
        ended = 0
        while self._flights and not ended:
            done, _ = self._ray.wait(list(self._flights), num_returns=1, timeout=1.0)
            self._report_progress(observer)
            for ref in done:
                ended += self._collect(ref, observer)
            ended += self._expire(observer)
        self._follow_the_cluster()

    def lend_idle_workers(self) -> None:
        if self._lending is not None:
            self._lending.share(self.in_flight)

    def _follow_the_cluster(self) -> None:
        """Take the capacity of the nodes alive now: at least one trial, which waits in
        Ray's queue while no node can hold it (the last one was lost; one may come
        back). Lending stops once the cluster is more than this machine."""
        capacity = max(1, trials_that_fit(self._ray.cluster_resources(), self.cpus, self.gpus))
        if capacity == self.capacity:
            return
        self.capacity = capacity
        if self._lending is not None and not _on_this_machine(self._ray.nodes()):
            self._lending.close()
            self._lending = None

    def cancel(self) -> None:
        for ref in self._flights:
            self._ray.cancel(ref, force=True)
        self._flights.clear()

    def _report_progress(self, observer: TrialObserver) -> None:
        """Pass on the curve points the running trials have sent, before any of their
        outcomes (which replace them); those of a dispatch no longer in flight are
        dropped. A queue lost with its node is replaced."""
        try:
            waiting = self._curves.qsize()
            sent = self._curves.get_nowait_batch(waiting) if waiting else []
        except self._ray.exceptions.RayError as err:  # only the live view loses them
            log.warning("evo: running trials' curve points were lost: %s", first_line(err))
            self._curves = _curve_queue(self._ray)  # for the trials dispatched from now on
            return
        running = {flight.number: flight for flight in self._flights.values()}
        for number, points in sent:
            if number in running:
                observer.progress(running[number].job, points)

    def _dispatch(self, job: TrialJob, attempt: int, observer: TrialObserver) -> None:
        lending = self._lending if self._lending is not None and _by_work(job) else None
        self._dispatches += 1
        job_here = replace(
            job,
            train=replace(job.train, threads=self._threads),
            lend_file=None if lending is None else str(lending.path),
            progress=QueueChannel(self._curves, self._dispatches),
        )
        if self._lending is not None:
            self._lending.share(self.in_flight + 1)
        ref = self._remote.remote(job_here, self._data_ref)
        self._flights[ref] = _InFlight(job, attempt, time.time(), self._dispatches)
        observer.started(job, attempt)

    def _collect(self, ref: Any, observer: TrialObserver) -> int:
        """Report the task's outcome, or retry it; returns 1 when the job ended."""
        from ray import exceptions as rx

        flight = self._flights.pop(ref)
        try:
            observer.finished(flight.job, self._ray.get(ref))
        except rx.OutOfMemoryError as err:
            error = f"out of memory: killed by Ray's memory monitor ({first_line(err)})"
            self._fail(flight, TrialStatus.FAILED, error, observer)
        except (
            rx.WorkerCrashedError,
            rx.NodeDiedError,
            rx.ObjectLostError,
            rx.RaySystemError,
        ) as err:
            error = f"worker lost: {type(err).__name__}: {first_line(err)}"
            if flight.attempt < self.retries:
                observer.retrying(flight.job, flight.attempt + 1, error)
                self._dispatch(flight.job, flight.attempt + 1, observer)
                return 0
            error += f" (after {flight.attempt + 1} attempts)"
            self._fail(flight, TrialStatus.FAILED, error, observer)
        except rx.RayTaskError as err:  # run_trial catches its own errors; this is a bug
            cause = err.cause or err
            error = f"trial raised {type(cause).__name__}: {first_line(cause)}"
            self._fail(flight, TrialStatus.FAILED, error, observer)
        return 1

    def _fail(
        self, flight: _InFlight, status: TrialStatus, error: str, observer: TrialObserver
    ) -> None:
        observer.finished(flight.job, failed_outcome(status, error, flight.dispatched))

    def _expire(self, observer: TrialObserver) -> int:
        now, ended = time.time(), 0
        for ref, flight in list(self._flights.items()):
            if now - flight.dispatched > self.timeout_s:
                self._ray.cancel(ref, force=True)
                del self._flights[ref]
                error = f"timed out after {self.timeout_s:g} s"
                self._fail(flight, TrialStatus.TIMEOUT, error, observer)
                ended += 1
        return ended

    def close(self) -> None:
        self.cancel()
        self._data_ref = None
        self._curves.shutdown(force=True)
        if self._lending is not None:
            self._lending.close()


class _RayDefaultAuthNotice(logging.Filter):
    """Ray (2.59 on) protects a local cluster it starts with a token, as it should, and
    says so in a WARNING on every start: a search printed it before its own first line.
    This drops that one notice and nothing else Ray logs about authentication."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this")


def _quiet_ray_default_auth_notice() -> None:
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _RayDefaultAuthNotice) for f in logger.filters):
        logger.addFilter(_RayDefaultAuthNotice())


def _curve_queue(ray: Any) -> Any:
    """The queue running trials send their curve points through: an actor on the driver's
    node (it lives as long as the driver does) that takes no CPU from the trials."""
    from ray.util.queue import Queue
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def _by_work(job: TrialJob) -> bool:
    """Whether the job's budget is work (steps, tokens), which lent cores only finish
    sooner; with a budget in seconds they would buy it more training than its genome
    would get from its own resources, and bias its score."""
    stages = [job.train] if job.adapt_train is None else [job.train, job.adapt_train]
    return all(stage.max_seconds is None for stage in stages)


def _on_this_machine(nodes: list[dict[str, Any]]) -> bool:
    """Whether the Ray cluster is this machine alone: then its trials can read what the
    driver posts in a file, and idle workers' cores are this machine's to lend."""
    alive = [node for node in nodes if node.get("Alive")]
    return len(alive) == 1 and alive[0].get("NodeManagerHostname") == socket.gethostname()


def trials_that_fit(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials with these resources fit on the cluster at once (perhaps none)."""
    fits = [resources.get("CPU", 0.0) / cpus] if cpus > 0 else []
    if gpus > 0:
        fits.append(resources.get("GPU", 0.0) / gpus)
    return int(min(fits, default=1.0) + 1e-9)


def cluster_capacity(resources: dict[str, float], cpus: float, gpus: float) -> int:
    """How many trials with these resources fit on the cluster at once: at least one."""
    capacity = trials_that_fit(resources, cpus, gpus)
    if capacity < 1:
        raise UserError(
            f"no trial fits on the Ray cluster: a trial needs {cpus:g} CPUs and {gpus:g} GPUs, "
            f"the cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
            " (lower trial.resources in the space)"
        )
    return capacity


def make_executor(
    space: SearchSpace, *, local: bool, address: str | None = None, timeout_s: float | None = None
) -> Executor:
    """The executor for a search of `space`: in this process when `local`, else Ray tasks
    with the space's resources, timeout (unless `timeout_s` says another) and retries on
    the cluster at `address` (None: `$RAY_ADDRESS`, or a local Ray instance)."""
    if local:
        return LocalExecutor()
    resources = space.trial.resources
    return RayExecutor(
        cpus=resources.cpus,
        gpus=resources.gpus,
        timeout_s=timeout_s or space.trial.timeout_s,
        retries=space.trial.retries,
        address=address or os.environ.get("RAY_ADDRESS"),
        lend_cores=space.trial.lend_cores,
    )
