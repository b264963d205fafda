"""Chaos: does a steady-state search survive kill -9, of its driver and of its Ray
workers, with nothing lost, nothing trained twice and nothing left behind?

A small search (tiny models of a generated corpus, three rungs, `--trials` decisions) runs
as `evo run SPACE --quiet --address HEAD` on a Ray head started here beforehand
(`ray start --head --block`), so that killing the driver leaves the cluster up, as it
would be on a real cluster. At `--driver-kills` random moments the driver gets SIGKILL and
`evo resume` starts it again; at `--worker-kills` other moments a Ray worker running a
trial gets SIGKILL (the executor should retry that trial). A moment is "after the K-th
result is recorded, plus a random delay", K and the delay drawn from `--seed`. Meanwhile a
reader polls `evo status` every `--poll` seconds: by default a long-lived process calling
`evo.status.print_status` with a fresh `Storage` each time (a separate process with its
own connections, as `evo status` is, without paying the torch import twice a second on a
small machine); `--reader cli` runs `python -m evo.cli status` for each poll instead,
which keeps about one core busy and slows a 2-core machine's trials down a lot. The
search is resumed until its run is `finished`, then the database, the disk and the
process table are checked:

- lost: decisions with no result row (done, diverged, invalid, failed or timeout);
- duplicated: (genome, rung) pairs with more than one result row (a decision with two
  results is one of them);
- zombies: rows still queued or running, checkpoint folders left under
  results/chaos/trials/, trials of a killed driver still running 5 s after the kill, Ray
  workers still running a trial once the run has finished, and processes of the Ray
  cluster still alive after it was shut down;
- locked: status polls that failed (with "database is locked" or any other error).

With `--nodes N` (N > 1) the cluster is N worker nodes of `--cpus` CPUs each beside a
head that runs no trial, all on this machine (each `ray start --block` with its own
ports, temporary folder and a 100 MB object store): at `--node-kills` more moments, a
worker node that runs a trial loses every process at once (SIGKILL, as a machine that
dies), and a new node takes its place; the executor should retry the lost trials on the
nodes left. Processes of a killed node still alive `--grace` s later are zombies too.

It also prints the kills actually done, the retried and interrupted rows, how long each
resumed driver took to start a trial, and the time lost to the interruptions: the wall
time of the chaotic run minus that of an uninterrupted run of the same space on the same
cluster (run first; `--no-baseline` skips it), raw and with the baseline scaled to the
chaotic run's useful worker-seconds (the two runs train different genomes, since results
come back in another order, and a shared machine may be busier during one of them); and
the worker-seconds the interrupted and retried attempts had run when they were cut short
(retried: start to retry; interrupted: start to the driver's kill). The last line is
`lost=L duplicated=D zombies=Z locked=K`. The exit status is 0 whatever the counts: this
measures, it does not judge. Linux only (it reads /proc).

    python bench/chaos.py
    python bench/chaos.py --trials 40 --rungs 50,150,450 --seed 3 --no-baseline
    python bench/chaos.py --nodes 3 --cpus 1 --node-kills 3 --no-baseline
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from tiny_search import steady_space_dict, write_corpus

from evo.metrics import TrialStatus
from evo.status import print_status
from evo.storage import Storage, TrialRecord

NAME = "chaos"
TRIAL_TITLE = "ray::execute_job"  # a Ray worker's process title while it runs a trial
ORPHAN_S = 5.0  # s after a driver's kill by which its trials must have stopped
MAX_RESTARTS = 20  # resumes after a driver died on its own, before giving up


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=60, help="search.budget.trials")
    p.add_argument("--rungs", default="100,300,900", help="rung budgets in steps")
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--cpus", type=int, default=2, help="CPUs of each node (1 per trial)")
    p.add_argument("--nodes", type=int, default=1, help="worker nodes (1: the head alone)")
    p.add_argument("--driver-kills", type=int, default=5)
    p.add_argument("--worker-kills", type=int, default=5)
    p.add_argument("--node-kills", type=int, default=0, help="with --nodes > 1")
    p.add_argument("--max-delay", type=float, default=2.0, help="s after the K-th result")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--poll", type=float, default=0.5, help="s between status polls")
    p.add_argument("--reader", choices=["process", "cli"], default="process")
    p.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--grace", type=float, default=10.0, help="s for processes to go away")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    return p.parse_args()


# The search


def write_space(folder: Path, args: argparse.Namespace) -> Path:
    """The test suite's steady-state search of tiny models of a generated corpus (char
    tokenizer), at this run's rungs, population, seed and budget."""
    rungs = [int(r) for r in args.rungs.split(",")]
    space = steady_space_dict(
        write_corpus(folder / "corpus"),
        mode="steady_state",
        population=args.population,
        seed=args.seed,
        target={"max_steps": rungs[-1]},
        rungs=rungs,
        budget={"trials": args.trials},
    )
    space["trial"]["retries"] = 2
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space), encoding="utf-8")
    return path


def ray_env() -> dict[str, str]:
    # `ray start` turns token authentication on by default (Ray >= 2.5x) while a driver's
    # ray.init does not: both sides must agree, so the head and every driver opt out.
    return {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}


class Driver:
    """One `evo run` or `evo resume` process, its output in a log file."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            command = [sys.executable, "-m", "evo.cli", *args]
            self.proc = subprocess.Popen(
                command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=ray_env()
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def tail(self, lines: int = 5) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join("    " + line for line in text[-lines:])


@dataclass
class Search:
    """Where a run lives and how its drivers are started."""

    name: str
    space: Path
    url: str
    address: str
    folder: Path
    drivers: list[Driver] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)  # drivers that died on their own

    def start(self, resume: bool) -> Driver:
        common = ["--storage", self.url, "--address", self.address, "--quiet"]
        verb = ["resume", self.name] if resume else ["run", str(self.space), "--name", self.name]
        log = self.folder / f"{self.name}-driver-{len(self.drivers)}.log"
        self.drivers.append(Driver([*verb, *common], self.folder, log))
        return self.drivers[-1]

    @property
    def driver(self) -> Driver:
        return self.drivers[-1]

    def status(self) -> str | None:
        try:
            with Storage(self.url, create=False) as storage:
                run = storage.get_run(self.name)
                return None if run is None else run.status
        except Exception:
            return None

    def results(self) -> int | None:
        try:
            with Storage(self.url, create=False) as storage:
                return sum(t.status.is_result for t in storage.trials(self.name))
        except Exception:
            return None

    def stop(self) -> None:
        """Kill the driver if it is still running (the benchmark failed)."""
        if self.drivers and self.driver.alive():
            self.driver.kill()

    def crashed(self) -> None:
        """Note that the driver died on its own, and resume the run."""
        code = self.driver.proc.returncode
        self.crashes.append(f"driver {len(self.drivers) - 1}, exit {code}:\n{self.driver.tail()}")
        if len(self.crashes) > MAX_RESTARTS:
            raise RuntimeError(f"the run does not finish; last driver:\n{self.driver.tail()}")
        self.start(resume=True)

    def finish(self) -> None:
        """Wait for the driver; resume the run until it is finished."""
        while self.driver.proc.wait() != 0 or self.status() != "finished":
            self.crashed()


# Processes, from /proc


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    cmdline: str
    state: str


def processes() -> dict[int, Proc]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except (OSError, UnicodeDecodeError):
            continue
        found[int(entry.name)] = Proc(int(entry.name), int(fields[1]), cmdline, fields[0])
    return found


def descendants(root: int, table: dict[int, Proc]) -> list[Proc]:
    children: dict[int, list[int]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc.pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(table[pid])
        todo += children.get(pid, [])
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NODE_PORTS = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port"]
NODE_PORTS += ["--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
NODE_STORE = 100 * 1024 * 1024  # bytes of object store per node (Ray's default: 30% of RAM)


class RayNode:
    """One node of a Ray cluster of its own (ports, temp folder), up until `stop`: the
    head when `head` is None, else a worker node joining the head at that address."""

    def __init__(
        self, cpus: int, log: Path, keep: bool, head: str | None = None, store: bool = True
    ) -> None:
        """`store`: a 100 MB object store (else Ray's default, 30% of the RAM)."""
        self.temp = Path(tempfile.mkdtemp(prefix="chaos-ray-", dir="/tmp"))  # short: sockets
        self.keep = keep
        command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block"]
        command += [f"--num-cpus={cpus}", "--node-ip-address=127.0.0.1"]
        command += [f"--temp-dir={self.temp}", "--disable-usage-stats"]
        command += [f"{flag}={free_port()}" for flag in NODE_PORTS]
        if head is None:
            port = free_port()
            self.address = f"127.0.0.1:{port}"
            command += ["--head", f"--port={port}", "--include-dashboard=false"]
        else:
            self.address = head
            command += [f"--address={head}"]
        if store:
            command += [f"--object-store-memory={NODE_STORE}"]
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=ray_env()
            )
        self.seen: dict[int, str] = {}  # every process of the node seen: pid → cmdline
        deadline = time.time() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')}")
            time.sleep(0.5)

    def processes(self) -> list[Proc]:
        procs = descendants(self.proc.pid, processes())
        self.seen.update((p.pid, p.cmdline) for p in procs)
        return procs

    def running_trials(self) -> list[Proc]:
        """Ray workers running a trial now."""
        return [p for p in self.processes() if p.cmdline.startswith(TRIAL_TITLE)]

    def kill(self) -> None:
        """Every process of the node at once, with SIGKILL: a machine that dies."""
        for proc in [*self.processes(), self.proc]:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, grace: float) -> list[str]:
        """Shut the node down; returns its processes still alive after `grace` s (and
        kills them: they are ours)."""
        self.processes()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        left = self.left(grace)
        for line in left:
            with contextlib.suppress(OSError):
                os.kill(int(line.split()[0]), signal.SIGKILL)
        if self.keep:
            print(f"Ray's logs: {self.temp}")
        else:
            shutil.rmtree(self.temp, ignore_errors=True)
        return left

    def left(self, grace: float) -> list[str]:
        """The node's processes still alive `grace` s from now (or once none is)."""
        deadline = time.time() + grace
        while True:
            table = processes()
            left = [
                table[pid]
                for pid, cmdline in self.seen.items()
                if pid in table and table[pid].cmdline == cmdline and table[pid].state != "Z"
            ]
            left += [p for p in table.values() if str(self.temp) in p.cmdline and p.state != "Z"]
            left = list({p.pid: p for p in left}.values())
            if not left or time.time() > deadline:
                return [f"{p.pid} {p.cmdline[:80]}" for p in left]
            time.sleep(0.5)


class RayCluster:
    """A head alone (`nodes` 1, with `cpus` CPUs), or a head that runs no trial and
    `nodes` worker nodes of `cpus` CPUs each, all on this machine."""

    def __init__(self, nodes: int, cpus: int, folder: Path, keep: bool) -> None:
        self.cpus, self.folder, self.keep = cpus, folder, keep
        alone = nodes == 1  # as this benchmark has always run it: Ray's defaults
        self.head = RayNode(cpus if alone else 0, folder / "ray.log", keep, store=not alone)
        self.address = self.head.address
        self.workers: list[RayNode] = []
        self.killed: list[RayNode] = []
        for _ in range(nodes if nodes > 1 else 0):
            self.add()

    def add(self) -> RayNode:
        log = self.folder / f"ray-node-{len(self.workers) + len(self.killed) + 1}.log"
        self.workers.append(RayNode(self.cpus, log, self.keep, head=self.address))
        return self.workers[-1]

    @property
    def nodes(self) -> list[RayNode]:
        return [self.head, *self.workers]

    def running_trials(self) -> list[Proc]:
        return [p for node in self.nodes for p in node.running_trials()]

    def replace_node(self, rng: random.Random) -> bool:
        """Kill a worker node that runs a trial, and start a new one in its place; False
        when no node runs a trial."""
        busy = sorted((n for n in self.workers if n.running_trials()), key=lambda n: n.proc.pid)
        if not busy:
            return False
        node = rng.choice(busy)
        node.kill()
        self.workers.remove(node)
        self.killed.append(node)
        self.add()
        return True

    def stop(self, grace: float) -> tuple[list[str], list[str]]:
        """Shut the cluster down; returns the processes of killed nodes that outlived
        them, and those of the others still alive after shutdown."""
        of_killed = [line for node in self.killed for line in node.left(grace)]
        for node in self.killed:
            node.stop(0)
        left = [line for node in self.workers for line in node.stop(grace)]
        return of_killed, left + self.head.stop(grace)


# The reader


def poll_status(url: str, name: str, every: float, stop: Any, out: Any) -> None:
    """Print the run's status every `every` s, into nothing, until `stop` is set; put
    (polls, failures, slowest poll in s) on `out`."""
    polls, failures, slowest = 0, [], 0.0
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with Storage(url, create=False) as storage:
                print_status(storage, name, Console(file=io.StringIO(), width=120))
        except Exception as err:
            failures.append(failure(err))
        polls += 1
        spent = time.perf_counter() - started
        slowest = max(slowest, spent)
        stop.wait(max(0.0, every - spent))
    out.put((polls, failures, slowest))


def failure(err: BaseException) -> str:
    """The error in one line, with the innermost place in evo it came through."""
    frames = traceback.extract_tb(err.__traceback__)
    ours = [f for f in frames if f"{os.sep}evo{os.sep}" in f.filename] or frames
    where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else ""
    lines = str(err).splitlines() or [""]
    return f"{type(err).__name__}: {lines[0][:160]}{where}"


class Reader:
    """Polls `evo status NAME` every `every` s until stopped."""

    def __init__(self, kind: str, url: str, name: str, every: float) -> None:
        self.kind, self.url, self.name, self.every = kind, url, name, every
        self.polls, self.failures, self.slowest = 0, [], 0.0
        if kind == "process":
            context = multiprocessing.get_context("spawn")
            self.stop_event: Any = context.Event()
            self.out: Any = context.Queue()
            self.worker: Any = context.Process(
                target=poll_status, args=(url, name, every, self.stop_event, self.out), daemon=True
            )
        else:
            self.stop_event = threading.Event()
            self.worker = threading.Thread(target=self._cli_loop, daemon=True)
        self.worker.start()

    def _cli_loop(self) -> None:
        command = [sys.executable, "-m", "evo.cli", "status", self.name, "--storage", self.url]
        while not self.stop_event.is_set():
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
                self.failures.append(lines[-1][:200])
            self.polls += 1
            spent = time.perf_counter() - started
            self.slowest = max(self.slowest, spent)
            self.stop_event.wait(max(0.0, self.every - spent))

    def stop(self) -> None:
        self.stop_event.set()
        if self.kind == "process":
            self.polls, self.failures, self.slowest = self.out.get(timeout=120)
        self.worker.join(timeout=120)


# Chaos


@dataclass(frozen=True)
class Moment:
    kind: str  # "driver" or "worker"
    after: int  # results recorded
    delay: float  # s after that


@dataclass
class Kills:
    driver: list[float] = field(default_factory=list)  # epoch seconds of each kill
    worker: list[float] = field(default_factory=list)
    node: list[float] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)  # moments that found nothing to kill
    orphans: list[str] = field(default_factory=list)  # a dead driver's trials still running


def moments(args: argparse.Namespace) -> list[Moment]:
    rng = random.Random(args.seed)
    kinds = ["driver"] * args.driver_kills + ["worker"] * args.worker_kills
    kinds += ["node"] * args.node_kills
    rng.shuffle(kinds)
    last = max(len(kinds) + 1, args.trials - 4)  # leave the last results alone
    afters = sorted(rng.sample(range(1, last), len(kinds)))
    return [
        Moment(k, a, rng.uniform(0, args.max_delay)) for k, a in zip(kinds, afters, strict=True)
    ]


def reach(search: Search, count: int) -> bool:
    """Wait until `count` results are recorded, resuming a driver that died on its own;
    False when the run finished first."""
    while True:
        while search.driver.alive():
            done = search.results()
            if done is not None and done >= count:
                return True
            time.sleep(0.2)
        if search.driver.proc.returncode == 0 and search.status() == "finished":
            return False
        search.crashed()


def kill_worker(ray: RayCluster, search: Search, rng: random.Random, timeout: float) -> bool:
    """SIGKILL a Ray worker running a trial (waiting up to `timeout` s for one)."""
    deadline = time.time() + timeout
    while search.driver.alive() and time.time() < deadline:
        busy = sorted(ray.running_trials(), key=lambda p: p.pid)
        if busy:
            try:
                os.kill(rng.choice(busy).pid, signal.SIGKILL)
                return True
            except OSError:  # it ended in between
                pass
        time.sleep(0.1)
    return False


def kill_node(ray: RayCluster, search: Search, rng: random.Random, timeout: float) -> bool:
    """Kill a worker node running a trial, and add another (waiting up to `timeout` s
    for a node to run a trial)."""
    deadline = time.time() + timeout
    while search.driver.alive() and time.time() < deadline:
        if ray.replace_node(rng):
            return True
        time.sleep(0.1)
    return False


def watch_orphans(ray: RayCluster, running: list[Proc], orphans: list[str], after: float) -> None:
    """In `after` s, note which of a killed driver's trials still run (Ray should end a
    dead job's workers; a new job never reuses them)."""

    def check() -> None:
        now = {p.pid for p in ray.running_trials()}
        orphans.extend(f"{p.pid} {p.cmdline[:60]} (driver killed)" for p in running if p.pid in now)

    timer = threading.Timer(after, check)
    timer.daemon = True
    timer.start()


def run_chaos(search: Search, ray: RayCluster, plan: list[Moment], seed: int) -> Kills:
    """Carry out the plan on the running search, then let it finish."""
    rng, kills = random.Random(f"{seed}:workers"), Kills()
    for moment in plan:
        if not reach(search, moment.after):
            kills.missed.append(f"{moment.kind} after {moment.after}: the run had finished")
            continue
        time.sleep(moment.delay)
        if moment.kind == "driver" and search.driver.alive():
            running = ray.running_trials()
            search.driver.kill()
            kills.driver.append(time.time())
            search.start(resume=True)
            watch_orphans(ray, running, kills.orphans, after=ORPHAN_S)
        elif moment.kind == "worker" and kill_worker(ray, search, rng, timeout=30):
            kills.worker.append(time.time())
        elif moment.kind == "node" and kill_node(ray, search, rng, timeout=30):
            kills.node.append(time.time())
        else:
            kills.missed.append(f"{moment.kind} after {moment.after}: nothing to kill")
    search.finish()
    return kills


def start_reader(search: Search, kind: str, every: float) -> Reader:
    """A reader of the run, once the run exists."""
    while search.status() is None and search.driver.alive():
        time.sleep(0.1)
    return Reader(kind, search.url, search.name, every)


# The audit


@dataclass
class Audit:
    lost: int
    duplicated: int
    duplicated_decisions: int
    active: int
    checkpoints: list[str]  # what is left under results/NAME/trials
    decisions: int
    retried: int
    interrupted: int
    failed: list[str]
    retry_errors: list[str]
    useful_worker_s: float
    retried_worker_s: float
    interrupted_worker_s: float
    resume_latency: list[float]  # s from each driver kill to its successor's first trial


def epoch(when: datetime | None) -> float | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def audit(search: Search, kills: Kills) -> Audit:
    with Storage(search.url, create=False) as storage:
        trials = storage.trials(search.name)
    results = [t for t in trials if t.status.is_result]
    per_key = Counter((t.genome_id, t.rung) for t in results)
    per_decision = Counter(t.decision for t in results)
    return Audit(
        lost=len({t.decision for t in trials} - set(per_decision)),
        duplicated=sum(n > 1 for n in per_key.values()),
        duplicated_decisions=sum(n > 1 for n in per_decision.values()),
        active=sum(t.status.is_active for t in trials),
        checkpoints=leftover_checkpoints(search.folder / "results" / search.name / "trials"),
        decisions=len({t.decision for t in trials}),
        retried=sum(t.status is TrialStatus.RETRIED for t in trials),
        interrupted=sum(t.status is TrialStatus.INTERRUPTED for t in trials),
        failed=[f"{t.status.value}: {t.error}" for t in results if t.status.is_failure],
        retry_errors=[(t.error or "")[:100] for t in trials if t.status is TrialStatus.RETRIED],
        useful_worker_s=sum(t.metric("wall_seconds") or 0.0 for t in results),
        retried_worker_s=sum(
            cut_short(t, epoch(t.finished_at)) for t in trials if t.status is TrialStatus.RETRIED
        ),
        interrupted_worker_s=sum(
            cut_short(t, next_kill(t, kills.driver))
            for t in trials
            if t.status is TrialStatus.INTERRUPTED
        ),
        resume_latency=resume_latency(trials, kills.driver),
    )


def leftover_checkpoints(folder: Path) -> list[str]:
    """The checkpoint folders (genome-G/rung-R, or a temporary one) under `folder`, and
    anything else in it; the folder itself when it is there but empty."""
    if not folder.exists():
        return []
    found = list(folder.glob("*/*"))
    found += [p for p in folder.iterdir() if p.is_file() or not any(p.iterdir())]
    return [str(p.relative_to(folder)) for p in found] or [f"{folder} (empty)"]


def cut_short(trial: TrialRecord, ended: float | None) -> float:
    started = epoch(trial.started_at)
    if started is None or ended is None:
        return 0.0
    return max(0.0, ended - started)


def next_kill(trial: TrialRecord, kills: list[float]) -> float | None:
    started = epoch(trial.started_at)
    after = [k for k in kills if started is not None and k >= started]
    return min(after) if after else epoch(trial.finished_at)


def resume_latency(trials: list[TrialRecord], kills: list[float]) -> list[float]:
    starts = sorted(s for t in trials if (s := epoch(t.started_at)) is not None)
    return [min((s for s in starts if s > k), default=math.nan) - k for k in kills]


def zombie_workers(ray: RayCluster, grace: float) -> list[str]:
    """Ray workers still running a trial `grace` s after the run finished."""
    deadline = time.time() + grace
    while (busy := ray.running_trials()) and time.time() < deadline:
        time.sleep(0.5)
    return [f"{p.pid} {p.cmdline[:80]}" for p in busy]


# Output


@dataclass(frozen=True)
class Baseline:
    wall: float  # s
    useful: float  # worker-s of its results
    reader: Reader


def report(
    args: argparse.Namespace,
    found: Audit,
    kills: Kills,
    search: Search,
    seconds: float,
    baseline: Baseline | None,
    readers: list[Reader],
    workers: list[str],
    left: tuple[list[str], list[str]],
) -> None:
    print(
        f"kills: driver {len(kills.driver)} of {args.driver_kills}, "
        f"worker {len(kills.worker)} of {args.worker_kills}, "
        f"node {len(kills.node)} of {args.node_kills} (nodes: {args.nodes})"
    )
    for missed in kills.missed:
        print(f"  missed: {missed}")
    print(f"drivers started: {len(search.drivers)}; died on their own: {len(search.crashes)}")
    for crash in search.crashes:
        print(f"  {crash}")
    print(
        f"decisions: {found.decisions} (budget {args.trials}); rows retried {found.retried}, "
        f"interrupted {found.interrupted}; results failed {len(found.failed)}"
    )
    for message, count in Counter(found.retry_errors).most_common():
        print(f"  retried {count} x {message}")
    for message in found.failed:
        print(f"  {message}")
    latency = ", ".join(f"{s:.1f}" for s in found.resume_latency) or "-"
    print(f"resume latency (driver kill -> next trial started), s: {latency}")
    print(f"wall time: chaotic run {seconds:.1f} s")
    print(
        f"useful worker-s: {found.useful_worker_s:.1f}; cut short: retried "
        f"{found.retried_worker_s:.1f}, interrupted {found.interrupted_worker_s:.1f}"
    )
    if baseline is not None:
        print(
            f"baseline (uninterrupted): wall {baseline.wall:.1f} s, "
            f"useful worker-s {baseline.useful:.1f}"
        )
        print(f"wall time lost: {seconds - baseline.wall:.1f} s (chaotic minus uninterrupted run)")
        # The two runs train different genomes (results come back in another order), and
        # a shared machine may be slower in one: scale the baseline to the same useful work.
        scaled = baseline.wall * found.useful_worker_s / max(baseline.useful, 1e-9)
        print(
            f"time lost to the interruptions: {seconds - scaled:.1f} s of wall time "
            f"(chaotic run minus the baseline scaled to its useful worker-s, {scaled:.1f} s)"
        )
    lost_work = found.retried_worker_s + found.interrupted_worker_s
    print(
        f"work lost to the interruptions: {lost_work:.1f} worker-s "
        "(what the retried and interrupted attempts had run)"
    )
    polls = sum(r.polls for r in readers)
    failures = [f for r in readers for f in r.failures]
    slowest = max((r.slowest for r in readers), default=0.0)
    print(f"status polls ({args.reader}): {polls}, failed {len(failures)}, slowest {slowest:.2f} s")
    locked = sum("database is locked" in f for f in failures)
    print(f"  of which 'database is locked': {locked}")
    for message, count in Counter(failures).most_common():
        print(f"  {count} x {message}")
    of_killed_nodes, after_shutdown = left
    leftovers = [*found.checkpoints, *kills.orphans, *workers, *of_killed_nodes, *after_shutdown]
    zombies = found.active + len(leftovers)
    print(
        f"zombies: rows queued/running {found.active}, checkpoint folders "
        f"{len(found.checkpoints)}, trials of killed drivers running {ORPHAN_S:g} s later "
        f"{len(kills.orphans)}, busy Ray workers after the run {len(workers)}, processes of "
        f"killed nodes {len(of_killed_nodes)}, Ray processes after shutdown "
        f"{len(after_shutdown)}"
    )
    for line in leftovers:
        print(f"  {line}")
    if found.duplicated_decisions:
        print(f"decisions with more than one result: {found.duplicated_decisions}")
    print(
        f"lost={found.lost} duplicated={found.duplicated} zombies={zombies} locked={len(failures)}"
    )


def uninterrupted(
    ray: RayCluster, space: Path, url: str, args: argparse.Namespace, searches: list[Search]
) -> Baseline:
    """The same search, run once without interruption on the same cluster."""
    search = Search("baseline", space, url, ray.address, space.parent)
    searches.append(search)
    started = time.time()
    search.start(resume=False)
    reader = start_reader(search, args.reader, args.poll)
    search.finish()
    wall = time.time() - started
    reader.stop()
    with Storage(url, create=False) as storage:
        useful = sum(t.metric("wall_seconds") or 0.0 for t in storage.trials(search.name))
    print(f"baseline: {wall:.1f} s", flush=True)
    return Baseline(wall, useful, reader)


def bench(args: argparse.Namespace, folder: Path) -> None:
    space = write_space(folder, args)
    url = f"sqlite:///{folder / 'evo.db'}"
    ray = RayCluster(args.nodes, args.cpus, folder, keep=args.keep is not None)
    searches: list[Search] = []
    try:
        baseline = uninterrupted(ray, space, url, args, searches) if args.baseline else None
        plan = moments(args)
        print("moments: " + ", ".join(f"{m.kind}@{m.after}+{m.delay:.1f}s" for m in plan))
        search = Search(NAME, space, url, ray.address, folder)
        searches.append(search)
        started = time.time()
        search.start(resume=False)
        reader = start_reader(search, args.reader, args.poll)
        kills = run_chaos(search, ray, plan, args.seed)
        seconds = time.time() - started
        reader.stop()
        workers = zombie_workers(ray, args.grace)
        found = audit(search, kills)
    finally:
        for each in searches:
            each.stop()
        left = ray.stop(args.grace)
    readers = [reader] if baseline is None else [baseline.reader, reader]
    report(args, found, kills, search, seconds, baseline, readers, workers, left)


def main() -> None:
    args = parse_args()
    started = time.time()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        bench(args, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
            bench(args, Path(tmp))
    print(f"benchmark wall time: {time.time() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
