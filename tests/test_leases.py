"""Driver leases: one driver per run, taken atomically by the database's clock, renewed
by a heartbeat, taken over once expired; a driver that lost its lease writes nothing
more; the read commands say `running` only while the driver is alive (on SQLite and
PostgreSQL where storage is tested alone)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import outcome, steady_space_dict, write_corpus
from rich.console import Console

from evo.cli import main as evo
from evo.driver import open_run
from evo.lease import HEARTBEAT_ENV, LeaseHeld, RunLease
from evo.space import load_space
from evo.status import print_status
from evo.storage import LeaseLost, RunStatus, Storage

SPACE = yaml.safe_dump(steady_space_dict(Path("corpus.txt")))  # stored, never searched
HERE = socket.gethostname()


@pytest.fixture
def store(database_url: str) -> Iterator[Storage]:
    with Storage(database_url) as storage:
        storage.create_run("r", SPACE, seed=0)
        yield storage


def wait_until(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def expired(storage: Storage, name: str = "r") -> Callable[[], bool]:
    def check() -> bool:
        driver = storage.require_run(name).driver
        return driver is not None and not driver.alive

    return check


def test_of_two_contenders_exactly_one_takes_the_lease(database_url: str, store: Storage) -> None:
    contenders = [Storage(database_url) for _ in range(2)]
    for round in range(5):
        start, won = threading.Barrier(2), [False, False]

        def contend(i: int, start: threading.Barrier = start, won: list[bool] = won) -> None:
            start.wait()
            won[i] = contenders[i].take_lease("r", "host", 1000 + i, 60.0)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(won) == [False, True], round
        winner = contenders[won.index(True)]
        driver = store.require_run("r").driver
        assert driver is not None and driver.alive and driver.lease == round + 1
        assert driver.pid == 1000 + won.index(True)
        winner.release_lease()
        assert not store.require_run("r").driver.alive
    for contender in contenders:
        contender.close()


def test_a_live_lease_is_refused_and_an_expired_one_taken_over_fencing_the_old_holder(
    database_url: str, store: Storage
) -> None:
    first, second = Storage(database_url), Storage(database_url)
    assert first.take_lease("r", "a", 1, 2.0)
    genome = first.genome_id("r", {"n_layers": 2})
    trial = first.add_trial("r", genome)  # the holder writes, and renews its lease doing so
    assert not second.take_lease("r", "b", 2, 60.0)
    wait_until(expired(store))  # the holder stalled: no heartbeat, no write
    assert second.take_lease("r", "b", 2, 60.0)
    driver = store.require_run("r").driver
    assert (driver.host, driver.pid, driver.lease, driver.alive) == ("b", 2, 2, True)
    # The old holder wakes up: each of its writes is refused whole, naming who took over.
    writes: list[Callable[[], object]] = [
        lambda: first.add_trial("r", genome),
        lambda: first.mark_running(trial, host="", device="cpu"),
        lambda: first.finish_trial(trial, outcome("done", {"bits_per_byte": 1.0})),
        lambda: first.set_run_status("r", RunStatus.FINISHED),
        lambda: first.genome_id("r", {"n_layers": 4}),
        lambda: first.start_session("r", 1),
        first.renew_lease,
    ]
    for write in writes:
        with pytest.raises(LeaseLost, match="'r' was taken over by host b pid 2"):
            write()
    assert [t.status for t in store.trials("r")] == ["queued"]
    assert len(store.genomes("r")) == 1 and store.run_sessions("r") == []
    assert store.require_run("r").status == "running"
    first.release_lease()  # no longer its lease: it leaves the new holder's alone
    assert store.require_run("r").driver.alive
    second.add_trial("r", genome)  # the new holder writes
    second.release_lease()
    for storage in (first, second):
        storage.close()


def test_the_run_is_running_while_its_heartbeat_is_fresh_then_lost(
    database_url: str, store: Storage
) -> None:
    driver = Storage(database_url)
    with RunLease(driver, "r", interval=0.5):
        time.sleep(1.6)  # three heartbeats: the lease of 1 s never lapses meanwhile
        run = store.require_run("r")
        assert run.shown_status == "running" and run.driver.pid == os.getpid()
        shown = io.StringIO()
        print_status(store, "r", Console(file=shown, width=200))
        assert "r: running, " in shown.getvalue()
        assert f"driver: host {HERE} pid {os.getpid()}, last heartbeat " in shown.getvalue()
        before = run.driver.heartbeat_at
        time.sleep(0.7)
        assert store.require_run("r").driver.heartbeat_at > before
    # Released without finishing (a crash): nobody drives the run any more.
    run = store.require_run("r")
    lost = f"{run.driver.heartbeat_at:%Y-%m-%d %H:%M:%S}"
    assert run.lost_since == run.driver.heartbeat_at
    assert run.shown_status == f"lost since {lost} UTC, resume with evo resume r"
    shown = io.StringIO()
    print_status(store, "r", Console(file=shown, width=200))
    assert f"r: lost since {lost} UTC, resume with evo resume r, steady" in shown.getvalue()
    assert "driver:" not in shown.getvalue()
    # A driver killed with its lease held shows lost once the lease expires.
    assert driver.take_lease("r", "a", 1, 2.0)
    assert store.require_run("r").shown_status == "running"
    wait_until(expired(store))
    assert store.require_run("r").shown_status.startswith("lost since ")
    store.set_run_status("r", RunStatus.INTERRUPTED)
    assert store.require_run("r").shown_status == "interrupted"
    driver.close()


def test_ls_and_the_dashboard_say_lost_once_the_lease_expires(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from evo.dashboard.api import run_summary

    url = f"sqlite:///{tmp_path / 'evo.db'}"
    storage = Storage(url)
    storage.create_run("r", SPACE, seed=0)
    assert storage.take_lease("r", "a", 1, 3.0)

    def shown() -> tuple[str, str]:
        assert evo(["ls", "--storage", url]) == 0
        line = next(line for line in capsys.readouterr().out.splitlines() if " r " in line)
        info = storage.require_run("r")
        return line, run_summary(storage, info, storage.trial_summaries("r"))["status"]

    line, status = shown()
    assert " running " in line and status == "running"
    wait_until(expired(storage))
    line, status = shown()
    assert " lost since " in line
    assert status == storage.require_run("r").shown_status
    assert status.startswith("lost since ") and status.endswith(", resume with evo resume r")


def test_a_second_driver_is_refused_while_the_first_lives_and_takes_a_dead_ones_run(
    database_url: str, store: Storage
) -> None:
    holder = Storage(database_url)
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert holder.take_lease("r", HERE, process.pid, 60.0)
        with pytest.raises(LeaseHeld, match=f"'r' is being run by host {HERE} pid {process.pid};"):
            RunLease(Storage(database_url), "r").__enter__()
    finally:
        process.kill()
        process.wait()
    holder.release_lease()
    # A process of another host cannot be asked whether it lives: its lease is waited out.
    assert holder.take_lease("r", "far", process.pid, 60.0)
    with pytest.raises(LeaseHeld, match=f"host far pid {process.pid}"):
        RunLease(Storage(database_url), "r").__enter__()
    holder.release_lease()
    # A process of this host that is gone (killed) need not be waited out, nor one that
    # died and whose parent has not yet read its exit status (a zombie).
    unreaped = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: Path(f"/proc/{unreaped.pid}/stat").read_text().split(") ")[1][0] == "Z")
    assert holder.take_lease("r", HERE, unreaped.pid, 60.0)
    with RunLease(Storage(database_url), "r", interval=60):
        assert store.require_run("r").driver.pid == os.getpid()
    unreaped.wait()
    assert holder.take_lease("r", HERE, process.pid, 60.0)
    with RunLease(Storage(database_url), "r", interval=60):
        assert store.require_run("r").driver.pid == os.getpid()
    with pytest.raises(LeaseLost):
        holder.renew_lease()
    holder.close()


def test_the_heartbeat_interval_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, store: Storage
) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "0.25")
    assert RunLease(store, "r").interval == 0.25
    monkeypatch.setenv(HEARTBEAT_ENV, "soon")
    with pytest.raises(Exception, match=f"{HEARTBEAT_ENV} must be a positive number"):
        RunLease(store, "r")


# Whole drivers


@pytest.fixture
def space_file(workdir: Path) -> Path:
    corpus = write_corpus(workdir / "corpus")
    (workdir / "space.yaml").write_text(yaml.safe_dump(steady_space_dict(corpus)))
    return workdir / "space.yaml"


def test_evo_run_and_resume_are_refused_while_the_runs_driver_lives(
    space_file: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    storage = Storage(url)
    open_run(storage, "space", load_space(space_file))
    parent = os.getppid()  # alive while this test runs
    assert storage.take_lease("space", HERE, parent, 60.0)
    for command in (["run", "space.yaml"], ["resume", "space"]):
        assert evo([*command, "--local", "--quiet", "--storage", url]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"evo: error: run 'space' is being run by host {HERE} pid {parent};")
        assert err.count("\n") == 1
    driver = storage.require_run("space").driver
    assert storage.trials("space") == [] and (driver.pid, driver.lease) == (parent, 1)


# `evo run` that suspends itself (SIGSTOP: swapped out, or paused) as its 4th trial starts,
# between two writes. Its heartbeat is kept out of a transaction meanwhile: a process
# stopped inside one would hold SQLite's write lock, and nobody could take over.
STALL = """
import os, signal, sys, threading
import evo.executor
from evo.cli import main
from evo.storage import Storage
gate, count = threading.Lock(), [0]
renew, run_trial = Storage.renew_lease, evo.executor.run_trial
def renew_outside_the_stall(self):
    with gate:
        renew(self)
def stalling(*args, **kwargs):
    count[0] += 1
    if count[0] == 4:
        with gate:
            os.kill(os.getpid(), signal.SIGSTOP)
    return run_trial(*args, **kwargs)
Storage.renew_lease, evo.executor.run_trial = renew_outside_the_stall, stalling
sys.exit(main(sys.argv[1:]))
"""


def test_a_driver_stalled_past_its_lease_stops_without_writing_when_it_wakes(
    space_file: Path, workdir: Path
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    command = [sys.executable, "-c", STALL, "run", "space.yaml", "--local", "--quiet"]
    env = {**os.environ, HEARTBEAT_ENV: "0.2"}
    driver = subprocess.Popen(
        [*command, "--storage", url], cwd=workdir, env=env, stderr=subprocess.PIPE, text=True
    )
    storage = Storage(url)
    try:
        stat = Path(f"/proc/{driver.pid}/stat")
        wait_until(lambda: stat.read_text().rpartition(") ")[2].startswith("T"), 120)
        wait_until(expired(storage, "space"))
        assert storage.take_lease("space", "elsewhere", 7, 600.0)
        before = storage.trials("space")
        assert before[-1].status.value == "running"  # the trial it stalled in
        os.kill(driver.pid, signal.SIGCONT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 2, err
    assert "evo: error: run 'space' was taken over by host elsewhere pid 7 after this " in err
    assert storage.trials("space") == before  # it wrote nothing more
    assert storage.require_run("space").driver.pid == 7


def test_validate_and_promote_run_beside_a_search_that_holds_the_run(
    space_file: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{workdir / 'evo.db'}"
    assert evo(["run", "space.yaml", "--local", "--quiet", "--storage", url]) == 0
    search = Storage(url)  # the search's driver, alive on another host
    assert search.take_lease("space", "elsewhere", 7, 600.0)
    search.set_run_status("space", RunStatus.RUNNING)
    capsys.readouterr()
    common = ["--steps", "3", "--local", "--storage", url]
    assert evo(["validate", "space", "--top", "1", "--seeds", "1", *common]) == 0
    assert evo(["promote", "space", "--out", "promoted", *common[:2], "--storage", url]) == 0
    err = capsys.readouterr().err
    note = "evo: run 'space' is still being searched by host elsewhere pid 7: its best so far"
    assert err.count(note) == 2
    storage = Storage(url)
    assert len(storage.validations("space")) == 1 and len(storage.promotions("space")) == 1
    # They took nothing from the search: its lease is its own, and it writes on.
    driver = storage.require_run("space").driver
    assert (driver.pid, driver.lease, driver.alive) == (7, 2, True)
    search.set_run_status("space", RunStatus.FINISHED)
    search.release_lease()
