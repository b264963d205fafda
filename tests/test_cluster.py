"""A search on a Ray cluster of several nodes, simulated on this machine with Ray's own
tooling (`ray.cluster_utils.Cluster`, what Ray's tests use): a head that runs no trial
(no CPUs) and worker nodes, each a raylet of its own with its resources, temporary
folder and a small object store. Nodes are lost and added while trials train, the
driver is killed and the run resumed against the same cluster, and GPUs declared on a
node are shared by trials that reserve half of one (the trials train on the CPU)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from conftest import replayed_decisions, steady_space_dict, write_corpus
from ray.cluster_utils import Cluster

from evo.cli import main as evo
from evo.executor import RayExecutor, _on_this_machine
from evo.metrics import TrialStatus
from evo.space import load_space
from evo.storage import Storage, TrialRecord
from llm.errors import UserError

MB = 1024 * 1024
# Ray's default object store is 30% of the RAM, per node: three nodes would claim 90%.
NODE = {"num_cpus": 1, "object_store_memory": 100 * MB}
NAME = "space"


class SimulatedCluster:
    """A head without CPUs and worker nodes, all on this machine; `reset` brings it back
    to two one-CPU workers between tests."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.count = folder, 0
        head = {**NODE, "num_cpus": 0, "include_dashboard": False, "temp_dir": self._temp()}
        self.ray = Cluster(initialize_head=True, head_node_args=head)
        self.workers: list[Any] = []
        self.reset()

    def _temp(self) -> str:
        self.count += 1
        return str(self.folder / f"node{self.count}")

    @property
    def address(self) -> str:
        return self.ray.address

    @property
    def head(self) -> str:
        return self.ray.head_node.node_id

    def add(self, **resources: Any) -> Any:
        node = self.ray.add_node(**{**NODE, **resources, "temp_dir": self._temp()})
        self.ray.wait_for_nodes()
        self.workers.append(node)
        return node

    def remove(self, node: Any) -> None:
        self.workers.remove(node)
        self.ray.remove_node(node)

    def reset(self) -> None:
        for node in self.workers[2:]:
            self.remove(node)
        while len(self.workers) < 2:
            self.add()

    def shutdown(self) -> None:
        self.ray.shutdown()


@pytest.fixture(scope="module")
def cluster() -> Iterator[SimulatedCluster]:
    # Under /tmp itself: a raylet's Unix sockets live in its temp folder, and their paths
    # must stay under 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="evo-cl-", dir="/tmp"))
    # Ray's Cluster writes the head's address to RAY_TMPDIR/ray/ray_current_cluster
    # whatever the nodes' temp folders, without making the folder: on a machine where
    # Ray never ran there is no /tmp/ray. Kept in this cluster's folder instead.
    (folder / "ray").mkdir()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", str(folder))
        simulated = SimulatedCluster(folder)
        try:
            ray.init(address=simulated.address, log_to_driver=False, logging_level="WARNING")
            yield simulated
        finally:
            ray.shutdown()
            simulated.shutdown()
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def nodes(cluster: SimulatedCluster) -> Iterator[SimulatedCluster]:
    """The cluster with two one-CPU worker nodes, as left for the next test."""
    cluster.reset()
    yield cluster
    cluster.reset()


def write_space(folder: Path, trials: int = 16, **trial: Any) -> Path:
    """The suite's steady-state search of tiny models, with rungs long enough (30, 90 and
    270 steps) for a node to be lost or added while trials train; `trial` sets the
    space's trial settings (resources, ...)."""
    space = steady_space_dict(
        write_corpus(folder / "corpus"),
        target={"max_steps": 270},
        rungs=[30, 90, 270],
        budget={"trials": trials},
    )
    space["trial"].update(retries=2, **trial)
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def node_of(trial: TrialRecord) -> str:
    """The first 8 hex digits of the id of the Ray node the trial ran on."""
    assert trial.worker is not None and trial.worker.startswith("node-"), trial.worker
    return trial.worker.removeprefix("node-").partition("/")[0]


def check_history(storage: Storage, space_file: Path) -> list[TrialRecord]:
    """The run finished with one result for each decision and (genome, rung), nothing
    left queued or running, and a history the scheduler replays decision by decision."""
    assert storage.require_run(NAME).status == "finished"
    trials = storage.trials(NAME)
    results = [t for t in trials if t.status.is_result]
    assert not any(t.status.is_active for t in trials)
    assert Counter(t.decision for t in results) == Counter({t.decision for t in trials})
    assert max(Counter((t.genome_id, t.rung) for t in results).values()) == 1
    assert replayed_decisions(load_space(space_file), 64, storage, NAME) == len(results)
    return trials


def trials_of(url: str) -> list[TrialRecord]:
    """The run's trials; none while the driver is still creating its database."""
    try:
        with Storage(url, create=False) as storage:
            return storage.trials(NAME) if storage.get_run(NAME) else []
    except UserError:
        return []


class Search(threading.Thread):
    """`evo run` (or `evo resume`) in this process, on a thread of its own: Ray starts a
    node's processes from the main thread only, so the test changes the cluster there."""

    def __init__(self, folder: Path, url: str, address: str, verb: str = "run") -> None:
        super().__init__(daemon=True)
        target = ["run", str(folder / "space.yaml")] if verb == "run" else ["resume", NAME]
        self.args = [*target, "--address", address, "--quiet", "--storage", url]
        self.url, self.code, self.error = url, None, None
        self.start()

    def run(self) -> None:
        try:
            self.code = evo(self.args)
        except BaseException as err:
            self.error = err

    def until(self, condition: Callable[[list[TrialRecord]], bool]) -> bool:
        """Poll the run's trials every 0.1 s until `condition(trials)`; False when the
        search ends first."""
        while self.is_alive():
            if condition(trials_of(self.url)):
                return True
            time.sleep(0.1)
        return False

    def result(self) -> int | None:
        self.join(timeout=600)
        if self.error is not None:
            raise self.error
        return self.code


def running(trials: list[TrialRecord]) -> int:
    return sum(t.status is TrialStatus.RUNNING for t in trials)


def results(trials: list[TrialRecord]) -> int:
    return sum(t.status.is_result for t in trials)


def test_trials_run_on_the_worker_nodes_and_outlive_a_lost_node_and_use_a_new_one(
    nodes: SimulatedCluster, workdir: Path
) -> None:
    space_file = write_space(workdir)
    url = f"sqlite:///{workdir / 'evo.db'}"
    lost = nodes.workers[1]
    search = Search(workdir, url, nodes.address)
    # Once two trials train (one on each node) and two results are in, lose a node with
    # the trial it trains, then add one.
    busy = search.until(lambda trials: running(trials) == 2 and results(trials) >= 2)
    assert busy, "the search ended before a node could be lost"
    in_flight = [t.id for t in trials_of(url) if t.status is TrialStatus.RUNNING]
    nodes.remove(lost)
    added = nodes.add()
    assert search.result() == 0
    with Storage(url, create=False) as storage:
        trials = check_history(storage, space_file)
        (session,) = storage.run_sessions(NAME)
    assert session.workers == 2  # two one-CPU workers; the head holds no trial
    # Trials ran on the worker nodes only (the lost node's may all have been cut short),
    # and the node added while the search ran got trials of its own.
    ran = Counter(node_of(t) for t in trials if t.worker)
    workers = {node.node_id[:8] for node in [*nodes.workers, lost]}
    assert set(ran) <= workers and nodes.head[:8] not in ran, (ran, workers)
    assert ran[added.node_id[:8]] > 0, ran
    # The lost node's trial is retried, unless it ended in the moment before the node went.
    retried = [t for t in trials if t.status is TrialStatus.RETRIED]
    assert {t.id for t in retried} <= set(in_flight)  # only attempts the loss cut short
    assert all(t.error.startswith("worker lost: NodeDiedError") for t in retried)
    for lost_attempt in retried:
        same = [t for t in trials if t.decision == lost_attempt.decision]
        (result,) = (t for t in same if t.status.is_result)
        assert result.attempt > lost_attempt.attempt  # retried on a node that lived


def test_a_driver_killed_with_9_is_resumed_against_the_same_cluster(
    nodes: SimulatedCluster, workdir: Path
) -> None:
    space_file = write_space(workdir)
    url = f"sqlite:///{workdir / 'evo.db'}"
    command = [sys.executable, "-m", "evo.cli", "run", str(space_file), "--quiet"]
    command += ["--address", nodes.address, "--storage", url]
    driver = subprocess.Popen(command, cwd=workdir, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while driver.poll() is None and time.time() < deadline:
            trials = trials_of(url)
            if running(trials) and results(trials) >= 4:
                break
            time.sleep(0.1)
        assert driver.poll() is None, "the driver ended before it could be killed"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    with Storage(url, create=False) as storage:
        assert storage.require_run(NAME).status == "running"  # as a dead driver leaves it
    assert Search(workdir, url, nodes.address, verb="resume").result() == 0
    with Storage(url, create=False) as storage:
        trials = check_history(storage, space_file)
        assert len(storage.run_sessions(NAME)) == 2
    # The killed driver's trials are kept as interrupted and their decisions run again.
    assert any(t.status is TrialStatus.INTERRUPTED for t in trials)
    assert {node_of(t) for t in trials if t.worker} <= {n.node_id[:8] for n in nodes.workers}


def overlapping(trials: list[TrialRecord]) -> int:
    """The most trials that were training at one moment (by the workers' clocks)."""
    events = sorted(
        [(t.started_at, 1) for t in trials] + [(t.finished_at, -1) for t in trials],
        key=lambda event: (event[0], event[1]),
    )
    most = now = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def test_trials_reserving_half_a_gpu_run_two_to_a_declared_gpu_on_the_cpu(
    nodes: SimulatedCluster, workdir: Path
) -> None:
    # One GPU declared on a node with four CPUs: the GPU, not the CPUs, limits the trials
    # that reserve half of it to two at a time. The space trains them on the CPU: this
    # machine's "GPU" is only a number Ray schedules by.
    gpu_node = nodes.add(num_cpus=4, num_gpus=1)
    space_file = write_space(workdir, trials=8, resources={"cpus": 1, "gpus": 0.5})
    space = yaml.safe_load(space_file.read_text())
    space["fixed"]["train"]["device"] = "cpu"
    space_file.write_text(yaml.safe_dump(space), encoding="utf-8")
    url = f"sqlite:///{workdir / 'evo.db'}"
    devices: set[str | None] = set()

    def record(trials: list[TrialRecord]) -> bool:
        devices.update(t.device for t in trials if t.status is TrialStatus.RUNNING)
        return False

    search = Search(workdir, url, nodes.address)
    search.until(record)
    assert search.result() == 0
    with Storage(url, create=False) as storage:
        trials = [t for t in check_history(storage, space_file) if t.status.is_result]
        (session,) = storage.run_sessions(NAME)
    assert session.workers == 2  # 1 GPU / 0.5, though the CPUs would hold 6
    assert {node_of(t) for t in trials} == {gpu_node.node_id[:8]}
    assert overlapping(trials) == 2
    assert {t.device for t in trials} == {"cpu"} and devices <= {"cpu"}


def test_cores_are_not_lent_when_several_nodes_share_this_machine(
    nodes: SimulatedCluster,
) -> None:
    alive = [node for node in ray.nodes() if node["Alive"]]
    assert len(alive) == 3 and len({node["NodeManagerHostname"] for node in alive}) == 1
    assert not _on_this_machine(ray.nodes())
    executor = RayExecutor(cpus=1, gpus=0, timeout_s=60, retries=0, lend_cores=True)
    try:
        assert executor.capacity == 2 and executor._lending is None
    finally:
        executor.close()


def test_only_a_one_node_cluster_on_this_machine_lends_cores() -> None:
    here = {"Alive": True, "NodeManagerHostname": socket.gethostname()}
    elsewhere = {"Alive": True, "NodeManagerHostname": "another-machine"}
    assert _on_this_machine([here])
    assert _on_this_machine([here, {**here, "Alive": False}])  # a node lost earlier
    assert not _on_this_machine([here, here])  # two raylets on this machine
    assert not _on_this_machine([here, elsewhere])
    assert not _on_this_machine([elsewhere])
