"""The executors on a real local Ray instance: scheduling, retries, timeouts, capacity."""

import itertools
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
from conftest import replayed_decisions, steady_space_dict, write_corpus

from evo.data import prepare_data
from evo.driver import open_run
from evo.executor import (
    LENDING_FILE_PREFIX,
    TRIAL_FOLDER_PREFIX,
    CoreLending,
    LentThreads,
    LocalExecutor,
    RayExecutor,
    TrialData,
    TrialJob,
    TrialOutcome,
    _RayDefaultAuthNotice,
    cluster_capacity,
    execute_job,
    search_status,
)
from evo.metrics import TrialStatus
from evo.search.steady_state import SteadyStateSearch
from evo.space import space_from_dict
from evo.storage import Storage
from llm.config import ModelConfig, TrainConfig
from llm.data import TokenSplits
from llm.errors import UserError
from llm.trial import CurvePoint, TrialEnd, TrialResult

VOCAB = 40


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    markers = tmp_path_factory.mktemp("markers")
    # Workers import this module's task functions by name, so they need its folder.
    tests_dir = str(Path(__file__).parent)
    env = {"env_vars": {"EVO_TEST_MARKER": str(markers), "PYTHONPATH": tests_dir}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=env)
    yield
    ray.shutdown()


def data() -> TrialData:
    stream = (np.arange(4000) % 9 + 2).astype(np.uint16)
    return TrialData(TokenSplits(stream[:3000], stream[3000:], 1000))


def job(genome_id: int, d_model: int = 16, n_heads: int = 2) -> TrialJob:
    model = ModelConfig(
        vocab_size=VOCAB, n_layers=1, d_model=d_model, n_heads=n_heads, d_ff=32, max_seq_len=16
    )
    train = TrainConfig(batch_size=4, seq_len=16, max_steps=4, warmup_steps=1, eval_interval=0)
    return TrialJob(genome_id=genome_id, model=model, train=train, seed=genome_id)


class Recorder:
    def __init__(self) -> None:
        self.starts: list[tuple[int, int]] = []
        self.retries: list[tuple[int, str]] = []
        self.outcomes: dict[int, TrialOutcome] = {}
        self.points: dict[int, list[CurvePoint]] = {}

    def started(self, job: TrialJob, attempt: int) -> None:
        self.starts.append((job.genome_id, attempt))

    def retrying(self, job: TrialJob, attempt: int, error: str) -> None:
        self.retries.append((job.genome_id, error))

    def progress(self, job: TrialJob, points: list[CurvePoint]) -> None:
        self.points.setdefault(job.genome_id, []).extend(points)

    def finished(self, job: TrialJob, outcome: TrialOutcome) -> None:
        self.outcomes[job.genome_id] = outcome


def test_local_executor_runs_every_job_and_classifies_outcomes():
    executor = LocalExecutor()
    executor.load_data(data())
    recorder = Recorder()
    executor.run([job(1), job(2, d_model=15, n_heads=2)], recorder)
    assert recorder.outcomes[1].status == "done"
    assert recorder.outcomes[2].status == "invalid"
    assert "divisible" in recorder.outcomes[2].result.error


def test_a_trial_removes_the_folders_of_killed_workers(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = tmp_path / f"{TRIAL_FOLDER_PREFIX}{gone.pid}-k9"  # its worker was killed
    (orphan / "from").mkdir(parents=True)
    running = tmp_path / f"{TRIAL_FOLDER_PREFIX}{os.getpid()}-r1"  # a live worker's
    running.mkdir()
    unknown = tmp_path / "evo-trial-abc"  # no process id in its name: not ours to judge
    unknown.mkdir()
    assert execute_job(job(1), data()).status == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, unknown.name])


def test_ray_executor_runs_trials_in_parallel_up_to_capacity(ray_cluster):
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=600, retries=0)
    assert executor.capacity == 2
    executor.load_data(data())
    recorder = Recorder()
    executor.run([job(i) for i in range(4)], recorder)
    assert {o.status for o in recorder.outcomes.values()} == {"done"}
    assert sorted(recorder.outcomes) == [0, 1, 2, 3]
    # The same genome and seed give the same result in a worker as in this process.
    local = execute_job(job(0), data())
    assert recorder.outcomes[0].result.metric("val_loss") == local.result.metric("val_loss")
    workers = {o.worker for o in recorder.outcomes.values()}
    assert len(workers) == 2, "both workers should have been used"


def test_the_idle_workers_cores_are_lent_to_the_trials_still_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    left = tmp_path / f"{LENDING_FILE_PREFIX}{gone.pid}-x.txt"  # a killed driver's
    left.write_text("2")
    lending = CoreLending(threads=2, capacity=3, folder=tmp_path)
    assert not left.exists()
    now = [0.0]
    trial = LentThreads(lending.path, own=2, own_steps=5, clock=lambda: now[0])
    seen = []
    steps = itertools.count(41)  # a continued trial: its steps are not numbered from 1
    for share in (3, 2, 2, 1, 1, 3):
        lending.share(in_flight=share)
        for _ in range(5):
            now[0] += 1.0
            seen.append(trial.threads(next(steps)))
    # The first steps run with the trial's own threads whatever is posted (its throughput
    # is measured on them); then 2 × 3 cores shared by the trials in flight.
    assert seen == [2] * 5 + [3] * 10 + [6] * 10 + [2] * 5
    # 10 s trained with 3 threads (half a worker lent), then 10 s with 6 (two workers).
    assert trial.lent_seconds == pytest.approx(10 * 0.5 + 10 * 2.0)
    lending.close()
    assert list(tmp_path.iterdir()) == []
    assert LentThreads(lending.path, own=2, own_steps=0).threads(1) == 2  # nothing posted: own


def test_a_lending_file_nobody_closed_is_removed_when_its_process_ends(tmp_path: Path) -> None:
    script = (
        "import sys\nfrom pathlib import Path\nfrom evo.executor import CoreLending\n"
        "lending = CoreLending(threads=1, capacity=2, folder=Path(sys.argv[1]))\n"
        "print(lending.path.exists())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
    )
    assert done.stdout == "True\n", done.stderr
    assert list(tmp_path.iterdir()) == []
    lending = CoreLending(threads=1, capacity=2, folder=tmp_path)
    del lending  # collected: removed too
    assert list(tmp_path.iterdir()) == []


def test_lent_threads_as_a_training_hook_set_torchs_thread_count(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    posted = tmp_path / "lend.txt"
    posted.write_text("3")
    hook = LentThreads(posted, own=1, own_steps=2)
    seen = []
    try:
        for step in (5, 6, 7, 8):
            hook(step)
            seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 1, 3, 3]


def test_every_way_a_trial_ends_is_a_result_of_the_search_in_the_same_word() -> None:
    for end in TrialEnd:
        status = search_status(end)
        assert status.is_result and status.value == end.value


def lent_threads_seen(job: TrialJob, data: TrialData) -> TrialOutcome:
    """Genome 0 waits (at most 60 s) until threads are lent to it; every trial reports
    the threads it was given as its `steps`, 0 when it was given no lending file."""
    seen = 0
    if job.lend_file is not None:
        threads = LentThreads(Path(job.lend_file), own=job.train.threads or 1, own_steps=0)
        seen, deadline = threads.threads(1), time.time() + 60
        while job.genome_id == 0 and seen == 1 and time.time() < deadline:
            time.sleep(0.05)
            seen = threads.threads(1)
    result = TrialResult(status=TrialEnd.DONE, metrics={"steps": seen})
    return TrialOutcome(result, TrialStatus.DONE, "", "", time.time(), time.time())


def test_a_trial_left_alone_at_the_end_trains_with_the_idle_workers_threads(
    ray_cluster: None,
) -> None:
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=600, retries=0, task=lent_threads_seen)
    by_time = job(2)
    by_time = replace(by_time, train=replace(by_time.train, max_steps=None, max_seconds=5.0))
    executor.load_data(data())
    recorder = Recorder()
    try:
        executor.run([job(0), job(1), by_time], recorder)
    finally:
        executor.close()
    # Genomes 1 and 2 ran beside genome 0 with their own thread; once they ended, their
    # worker's core went to genome 0. Genome 2's budget is in seconds: it is never lent
    # cores (they would buy it more training), so it gets no lending file.
    assert {g: o.result.metric("steps") for g, o in recorder.outcomes.items()} == {0: 2, 1: 1, 2: 0}


def crash_on_first_attempt(job: TrialJob, data: TrialData) -> TrialOutcome:
    marker = Path(os.environ["EVO_TEST_MARKER"]) / f"attempt-{job.genome_id}"
    if not marker.exists():
        marker.write_text("crashed once")
        os._exit(1)  # the worker process dies, as on a lost node or a segfault
    return execute_job(job, data)


def test_a_dead_worker_is_retried(ray_cluster):
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=600, retries=1, task=crash_on_first_attempt)
    executor.load_data(data())
    recorder = Recorder()
    executor.run([job(7)], recorder)
    assert recorder.starts == [(7, 0), (7, 1)], recorder.outcomes[7].result.error
    assert len(recorder.retries) == 1 and "worker lost" in recorder.retries[0][1]
    assert recorder.outcomes[7].status == "done"


def curve_while_running(job: TrialJob, data: TrialData) -> TrialOutcome:
    """Send a curve point, then go on until the driver has it (it leaves a marker)."""
    assert job.progress is not None
    job.progress.send([CurvePoint(step=1, tokens=64, seconds=0.1, train_loss=3.0)])
    received = Path(os.environ["EVO_TEST_MARKER"]) / f"received-{job.genome_id}"
    deadline = time.time() + 60
    while not received.exists() and time.time() < deadline:
        time.sleep(0.05)
    result = TrialResult(status=TrialEnd.DONE, metrics={"steps": int(received.exists())})
    return TrialOutcome(result, TrialStatus.DONE, "", "", time.time(), time.time())


class MarkingRecorder(Recorder):
    def __init__(self, markers: Path) -> None:
        super().__init__()
        self.markers = markers

    def progress(self, job: TrialJob, points: list[CurvePoint]) -> None:
        assert job.genome_id not in self.outcomes  # the trial has not ended
        super().progress(job, points)
        (self.markers / f"received-{job.genome_id}").touch()


def workers_marker_folder() -> Path:
    return Path(ray.get(ray.remote(lambda: os.environ["EVO_TEST_MARKER"]).remote()))


def test_a_running_trials_curve_points_reach_the_driver_while_it_trains(ray_cluster):
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=600, retries=0, task=curve_while_running)
    executor.load_data(data())
    recorder = MarkingRecorder(workers_marker_folder())
    try:
        executor.run([job(11)], recorder)
    finally:
        executor.close()
    assert [(p.step, p.tokens) for p in recorder.points[11]] == [(1, 64)]
    assert recorder.outcomes[11].result.metric("steps") == 1  # it saw them arrive


def test_a_lost_curve_queue_costs_only_its_points(ray_cluster):
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=600, retries=0, task=curve_while_running)
    executor.load_data(data())
    recorder = MarkingRecorder(workers_marker_folder())
    ray.kill(executor._curves.actor)  # as when its node is lost
    (recorder.markers / "received-12").touch()  # this trial would wait for points in vain
    try:
        executor.run([job(12)], recorder)
        executor.run([job(13)], recorder)
    finally:
        executor.close()
    # The driver went on (its stub trial raised sending: a real one's CurveSender drops).
    assert 12 in recorder.outcomes and 12 not in recorder.points
    assert [(p.step, p.tokens) for p in recorder.points[13]] == [(1, 64)]  # a new queue


def always_crash(job: TrialJob, data: TrialData) -> TrialOutcome:
    os._exit(1)


def test_retries_are_bounded(ray_cluster):
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=600, retries=1, task=always_crash)
    executor.load_data(data())
    recorder = Recorder()
    executor.run([job(3)], recorder)
    outcome = recorder.outcomes[3]
    assert outcome.status == "failed"
    assert "after 2 attempts" in outcome.result.error


def hang(job: TrialJob, data: TrialData) -> TrialOutcome:
    time.sleep(60)
    raise AssertionError("unreachable")


def test_a_trial_over_its_timeout_is_cancelled_and_recorded(ray_cluster):
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=2, retries=3, task=hang)
    executor.load_data(data())
    recorder = Recorder()
    started = time.time()
    executor.run([job(5)], recorder)
    assert time.time() - started < 20
    assert recorder.outcomes[5].status == "timeout"
    assert recorder.retries == []  # timeouts are final, never retried


def test_capacity_is_refused_when_no_trial_fits():
    assert cluster_capacity({"CPU": 8.0, "GPU": 1.0}, cpus=1, gpus=0.25) == 4
    assert cluster_capacity({"CPU": 2.0}, cpus=0.5, gpus=0) == 4
    with pytest.raises(UserError, match="no trial fits"):
        cluster_capacity({"CPU": 2.0}, cpus=1, gpus=1)


def test_a_steady_state_search_on_ray_replays_from_its_recorded_order(
    ray_cluster, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    space = space_from_dict(steady_space_dict(write_corpus(tmp_path / "corpus")))
    storage = Storage(f"sqlite:///{tmp_path / 'evo.db'}")
    open_run(storage, "r", space)
    data, vocab = prepare_data(space)
    # A generous timeout: a loaded machine starts Ray workers slowly.
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=900, retries=1)
    SteadyStateSearch(space, "r", storage, executor, data, vocab).run()
    trials = storage.trials("r")
    assert {t.status for t in trials} == {"done"} and len(trials) == 16
    # Two workers: some decisions were made before the result of the one before them.
    by_decision = sorted(trials, key=lambda t: t.decision)
    assert any(t.seen < before.recorded for before, t in itertools.pairwise(by_decision))
    # Whatever the timing, the stored order of results explains every decision.
    assert replayed_decisions(space, vocab, storage, "r") == 16


STARTS_RAY = """
import os, ray
from evo.executor import RayExecutor
RayExecutor(cpus=1, gpus=0, timeout_s=30, retries=0)
print(os.environ.get("RAY_AUTH_MODE"))
ray.shutdown()
"""


def test_a_local_ray_cluster_keeps_token_auth_without_saying_so_on_every_start(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    started = subprocess.run(
        [sys.executable, "-c", STARTS_RAY],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    ray_version = tuple(map(int, ray.__version__.split(".")[:2]))
    if ray_version >= (2, 59):  # a local cluster's default from then on, kept
        assert started.stdout.split() == ["token"]
    assert "WARNING" not in started.stderr


def test_only_rays_notice_of_its_default_is_dropped():
    def passes(message: str) -> bool:
        record = logging.LogRecord("ray", logging.WARNING, __file__, 1, message, None, None)
        return _RayDefaultAuthNotice().filter(record)

    assert not passes("Token authentication is enabled for this Ray cluster. Set ...")
    assert passes("Token authentication is disabled for this Ray cluster. Anyone ...")
    assert passes("Token authentication is enabled but no token was found. ...")
