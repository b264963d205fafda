"""Scheduler scale: are decisions and `evo status` still fast with 10,000 trials stored?

Two goals: a scheduling decision takes under 50 ms with 10,000 trials in the database,
and `evo status` answers in under 2 s there.

For each space (by default tiny.yaml, one objective, and small.yaml, two), a fresh SQLite
database gets a run of `--trials` trials of the space's steady-state search. They are
made by the real loop (`SteadyStateSearch`, its scheduler, storage and checkpoints) with
an executor that trains nothing: each trial ends, at a simulated time, with a synthetic
result (bits per byte a smooth function of the genes plus noise, better at higher rungs;
training speed from the model's FLOPs per token; steps and tokens from the rung's budget;
a 3-point curve; about 2% failures). The simulated clock also stands in for storage's,
so sessions and trial times are consistent and worker utilization can be computed. The
run is written in memory (`--scratch`, /dev/shm), then copied to a temporary folder on
disk (`--keep PATH` keeps it), where everything below is measured.

Then, with those trials stored:

- restore: a fresh driver rebuilds its scheduler from the history (`_restore`), as
  `evo resume` does after a restart.
- decisions: `--decisions` more trials, one at a time, each as the live loop makes it:
  `_decide` (the scheduler's `decide`, with the driver's budget check, then the genome and
  trial recorded), `started`, and `finished` with a synthetic result (stored, then
  `scheduler.result`). Reported: `decide` alone, `result` alone, and the whole.
- `evo status NAME` run as a subprocess (median of `--status-runs`), `print_status` in
  this process (the query and rendering work), and the imports alone.

With `--beyond F` the space's target is F times its top rung: the search forecasts the
target (evo.schedule.forecast), refitting the rung scores with every result and storing
every genome's prediction with it; `refit` is that part of a result's bookkeeping (the
fit and the predictions, not the write), and the genomes fitted are printed. A decision
reads the fit made with the last result and never fits.

Prints one line per figure with its goal beside it (judged on the median). With the
defaults it takes about 20 minutes on a busy 2-core machine, most of it the two-objective
run's generation and restore (each of its results re-ranks its rung).

    python bench/scheduler_scale.py
    python bench/scheduler_scale.py --trials 2000 --space search_spaces/small.yaml
    python bench/scheduler_scale.py --space search_spaces/tiny.yaml --trials 1450 --beyond 9
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import io
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

from rich.console import Console

import evo.storage.store as store
from evo.checkpoints import CheckpointStore
from evo.data import TrialData
from evo.driver import open_run
from evo.executor import Executor, TrialJob, TrialObserver, TrialOutcome, search_status
from evo.search.steady_state import SteadyStateSearch
from evo.space import SearchSpace, load_space
from evo.status import print_status
from evo.storage import Storage
from llm.optim import planned_steps
from llm.trial import CurvePoint, TrialEnd, TrialResult

ROOT = Path(__file__).resolve().parents[1]
SPACES = ["search_spaces/tiny.yaml", "search_spaces/small.yaml"]
DECISION_GOAL_MS = 50.0
STATUS_GOAL_S = 2.0
START = 1_735_689_600.0  # the synthetic runs' clock starts on 2025-01-01 (UTC)
FAILURE_RATE = 0.02
PROGRESS_EVERY = 2000  # trials
DEVICE_FLOPS = {"cpu": 2e10, "cuda": 4e13}  # training FLOP/s a trial reaches
POSITION_COST = {"learned": 0.04, "sinusoidal": 0.06, "rope": 0.0, "alibi": 0.01, "none": 0.12}
SCRATCH = Path("/dev/shm") if os.path.isdir("/dev/shm") else None  # in memory, where it exists
CHECKPOINT = {"stable.pt": b"synthetic"}  # what a trial below the top rung leaves


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--space", action="append", help=f"repeatable (default: {' and '.join(SPACES)})")
    p.add_argument("--trials", type=int, default=10_000, help="trials stored before measuring")
    p.add_argument("--decisions", type=int, default=200, help="decisions timed after them")
    p.add_argument("--status-runs", type=int, default=3, help="`evo status` subprocesses")
    p.add_argument("--workers", type=int, default=4, help="trials in flight while generating")
    p.add_argument("--seed", type=int, default=0, help="of the synthetic results")
    p.add_argument("--keep", type=Path, help="keep the databases in this folder")
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="where trials are generated")
    p.add_argument("--show-status", action="store_true", help="print what `evo status` says")
    p.add_argument(
        "--beyond",
        type=float,
        default=1.0,
        metavar="F",
        help="the target F times the top rung: the search forecasts it (default 1: it does not)",
    )
    args = p.parse_args()
    args.space = args.space or SPACES
    return args


# Synthetic trials


@dataclass
class Clock:
    """The simulated time, in seconds since the epoch."""

    now: float = START

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now, timezone.utc)


@contextlib.contextmanager
def simulated_time(clock: Clock) -> Iterator[None]:
    """Storage's own timestamps (sessions, runs, trials started) read `clock`."""
    real = store._now
    store._now = clock.datetime
    try:
        yield
    finally:
        store._now = real


def trained(job: TrialJob, budgets: list[dict[str, float]]) -> tuple[int, int]:
    """Steps and tokens the job trains: from the stable checkpoint of the rung below to
    its rung's budget, then the adapt stage (as the driver's `_cost` counts them)."""
    total = planned_steps(job.train)
    assert total is not None, "a synthetic trial needs a step or token budget"
    start = 0
    if job.rung > 0:
        below = planned_steps(dataclasses.replace(job.train, **budgets[job.rung - 1]))
        start = below[0] if below is not None else 0
    steps = int(total[1] - start)
    tokens = steps * job.train.tokens_per_step
    adapt = planned_steps(job.adapt_train) if job.adapt_train is not None else None
    if job.adapt_train is not None and adapt is not None:
        steps += adapt[1]
        tokens += adapt[1] * job.adapt_train.tokens_per_step
    return steps, tokens


def synthetic_result(job: TrialJob, space: SearchSpace, seed: int) -> TrialResult:
    """A trial's result without training: a smooth function of the genes plus noise."""
    rng = random.Random(f"{seed}:{job.genome_id}:{job.rung}")
    model, train = job.model, job.train
    steps, tokens = trained(job, space.rung_budgets())
    flops = model.flops_per_token(train.seq_len)
    device = "cuda" if space.trial.resources.gpus > 0 else "cpu"
    speed = DEVICE_FLOPS[device] / flops * math.exp(rng.gauss(0, 0.05))
    seconds = tokens / speed + rng.uniform(2.0, 6.0)  # plus start-up and evaluation
    if rng.random() < FAILURE_RATE:
        error = "synthetic failure: out of memory"
        failed = TrialResult(TrialEnd.FAILED, error=error, device=device)
        failed.metrics["wall_seconds"] = seconds
        return failed
    params = model.param_count()
    bpb = (
        3.0
        - 0.1 * job.rung
        + 0.3 * math.log10(train.learning_rate / 3e-3) ** 2
        - 0.15 * math.log10(params.non_embedding / 1e5)
        + POSITION_COST.get(model.pos_encoding, 0.0)
        + rng.gauss(0, 0.03)
    )
    val_loss = bpb * 2.0
    curve = [
        CurvePoint(
            step=steps * i // 3,
            tokens=tokens * i // 3,
            seconds=seconds * i / 3,
            train_loss=val_loss * (1 + 0.5 / i),
            val_loss=val_loss if i == 3 else None,
        )
        for i in (1, 2, 3)
    ]
    return TrialResult(
        TrialEnd.DONE,
        metrics={
            "val_loss": val_loss,
            "perplexity": math.exp(val_loss),
            "bits_per_byte": bpb,
            "accuracy": max(0.0, 0.6 - 0.1 * bpb),
            "train_tokens_per_s": speed,
            "decode_tokens_per_s": speed / 4,
            "params": params.total,
            "params_non_embedding": params.non_embedding,
            "flops_per_token": flops,
            "peak_memory_bytes": 16 * params.total
            + 4 * train.batch_size * train.seq_len * model.d_model,
            "wall_seconds": seconds,
            "steps": steps,
            "tokens": tokens,
        },
        device=device,
        curve=curve,
    )


def synthetic_outcome(job: TrialJob, space: SearchSpace, seed: int, started: float) -> TrialOutcome:
    result = synthetic_result(job, space, seed)
    done = result.status is TrialEnd.DONE
    return TrialOutcome(
        result=result,
        status=search_status(result.status),
        host="synthetic",
        worker="worker",
        started=started,
        finished=started + result.metrics["wall_seconds"],
        checkpoint=published(job) if job.keep_stable and done else None,
    )


def published(job: TrialJob) -> str:
    """Publish the small checkpoint a synthetic trial below the top rung leaves (as a worker
    does) and return its name."""
    assert job.checkpoints is not None
    name = job.checkpoints.name(job.genome_id, job.rung)
    job.checkpoints.write(name, CHECKPOINT)
    return name


class SyntheticExecutor(Executor):
    """`capacity` workers on the simulated clock: a job ends after its synthetic wall time,
    and waiting moves the clock on to the next end."""

    def __init__(self, space: SearchSpace, clock: Clock, capacity: int, seed: int) -> None:
        self.space, self.clock, self.capacity, self.seed = space, clock, capacity, seed
        self.running: list[tuple[float, int, TrialJob, TrialOutcome]] = []
        self.submitted = self.finished = 0
        self.began = time.perf_counter()

    def load_data(self, data: TrialData) -> None:
        pass

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def submit(self, job: TrialJob, observer: TrialObserver) -> None:
        observer.started(job, 0)
        outcome = synthetic_outcome(job, self.space, self.seed, self.clock.now)
        self.submitted += 1
        heapq.heappush(self.running, (outcome.finished, self.submitted, job, outcome))

    def wait(self, observer: TrialObserver) -> None:
        finished, _, job, outcome = heapq.heappop(self.running)
        self.clock.now = max(self.clock.now, finished)
        observer.finished(job, outcome)
        self.finished += 1
        if self.finished % PROGRESS_EVERY == 0:
            elapsed = time.perf_counter() - self.began
            print(f"  {self.finished:,} trials stored, {elapsed:.0f} s", flush=True)


# The run


def bench_space(path: str, trials: int, beyond: float = 1.0) -> SearchSpace:
    """The space, with a budget of exactly `trials` decisions and its target `beyond`
    times its top rung."""
    budget = [f"search.budget={{trials: {trials}}}"]
    space = load_space(ROOT / path, budget)
    unit, top = next(iter(space.rung_budgets()[-1].items()))
    target = top * beyond if unit == "max_seconds" else int(top * beyond)
    return load_space(ROOT / path, [*budget, f"search.target.{unit}={target}"])


def make_driver(
    space: SearchSpace, name: str, storage: Storage, executor: Executor, folder: Path
) -> SteadyStateSearch:
    return SteadyStateSearch(
        space,
        name,
        storage,
        executor,
        cast(TrialData, None),  # the synthetic executor needs no data
        space.data.vocab_size,
        checkpoints=CheckpointStore(folder / "trials"),
    )


def generate(path: str, name: str, folder: Path, args: argparse.Namespace) -> float:
    """Store a run of `args.trials` synthetic trials in `folder`; returns the seconds it took.
    It is written in `args.scratch` (memory, where SQLite's commits cost no disk flush),
    then moved. The run is left interrupted, its paused genomes' checkpoints kept, as a
    killed driver leaves it."""
    space = bench_space(path, args.trials, args.beyond)
    clock = Clock()
    executor = SyntheticExecutor(space, clock, args.workers, args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="evo-scale-", dir=args.scratch) as scratch:
        with simulated_time(clock), Storage(f"sqlite:///{Path(scratch) / 'evo.db'}") as storage:
            open_run(storage, name, space)
            driver = make_driver(space, name, storage, executor, Path(scratch))
            session = storage.start_session(name, executor.capacity)
            driver._loop([])
            storage.end_session(session)
            storage.set_run_status(name, "interrupted")
        shutil.copytree(scratch, folder, dirs_exist_ok=True)
    return time.perf_counter() - started


# Measurements


@dataclass(frozen=True)
class Times:
    """Milliseconds of repeated calls, of the wall clock and (where measured) of this
    process's CPU, the steadier figure on a busy machine."""

    values: list[float]
    cpu: list[float] = dataclasses.field(default_factory=list)

    def text(self) -> str:
        v = sorted(self.values)
        p95 = v[min(len(v) - 1, math.ceil(0.95 * len(v)) - 1)]
        text = f"median {statistics.median(v):.1f} ms, p95 {p95:.1f} ms, max {v[-1]:.1f} ms"
        if self.cpu:
            text += f" (CPU median {statistics.median(self.cpu):.1f} ms)"
        return text

    def verdict(self) -> str:
        return "ok" if statistics.median(self.values) < DECISION_GOAL_MS else "MISSED"


def timed(
    func: Callable[..., Any], into: list[float], cpu: list[float] | None = None
) -> Callable[..., Any]:
    """`func`, appending the milliseconds of each call to `into` (and of CPU to `cpu`)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started, processed = time.perf_counter(), time.process_time()
        try:
            return func(*args, **kwargs)
        finally:
            into.append(1000 * (time.perf_counter() - started))
            if cpu is not None:
                cpu.append(1000 * (time.process_time() - processed))

    return wrapper


@dataclass(frozen=True)
class Decisions:
    restore_s: float
    read_s: float  # of which: reading the trials
    decide: Times
    result: Times
    trial: Times  # everything the driver does for one trial
    refit: Times  # of which: the forecast's refit and predictions (none without one)
    genomes: int  # fitted by the last refit


def measure_decisions(path: str, name: str, folder: Path, args: argparse.Namespace) -> Decisions:
    """Restart a driver on the stored run, then time `args.decisions` trials one at a time."""
    space = bench_space(path, args.trials + args.decisions + 1, args.beyond)
    executor = SyntheticExecutor(space, Clock(), 1, args.seed)
    with Storage(f"sqlite:///{folder / 'evo.db'}", create=False) as storage:
        read = time.perf_counter()
        storage.trials(name)
        read_s = time.perf_counter() - read
        driver = make_driver(space, name, storage, executor, folder)
        started = time.perf_counter()
        driver._restore()
        restore_s = time.perf_counter() - started
        decide: list[float] = []
        result: list[float] = []
        trial: list[float] = []
        scheduler = driver.scheduler
        decide_cpu: list[float] = []
        scheduler.decide = timed(scheduler.decide, decide, decide_cpu)  # type: ignore[method-assign]
        scheduler.result = timed(scheduler.result, result)  # type: ignore[method-assign]
        refit: list[float] = []
        refit_cpu: list[float] = []
        forecast = scheduler.forecast
        if forecast is not None:
            forecast.record = timed(forecast.record, refit, refit_cpu)  # type: ignore[method-assign]
        for _ in range(args.decisions):
            begun = time.perf_counter()
            job = driver._decide()
            assert job is not None, "the budget allows every timed decision"
            driver.started(job, 0)
            between = time.perf_counter()
            outcome = synthetic_outcome(job, space, args.seed, time.time())
            resumed = time.perf_counter()
            driver.finished(job, outcome)
            trial.append(1000 * (time.perf_counter() - resumed + between - begun))
    genomes = len(forecast.fit.genomes) if forecast is not None else 0
    return Decisions(
        restore_s,
        read_s,
        Times(decide, decide_cpu),
        Times(result),
        Times(trial),
        Times(refit, refit_cpu),
        genomes,
    )


@dataclass(frozen=True)
class StatusTimes:
    command_s: float  # `evo status NAME` as a subprocess, median
    in_process_s: float  # print_status alone, median
    imports_s: float  # a Python that imports what `evo status` imports, median
    output: str


def median_seconds(run: Callable[[], object], times: int) -> float:
    seconds = []
    for _ in range(times):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure_status(name: str, folder: Path, runs: int) -> StatusTimes:
    url = f"sqlite:///{folder / 'evo.db'}"
    command = [sys.executable, "-m", "evo.cli", "status", name, "--storage", url]
    shown: list[str] = []

    def subprocess_status() -> None:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)
        shown[:] = [done.stdout]

    def in_process_status() -> None:
        print_status(Storage(url, create=False), name, Console(file=io.StringIO(), width=80))

    imports = [sys.executable, "-c", "import evo.cli, evo.status"]
    return StatusTimes(
        command_s=median_seconds(subprocess_status, runs),
        in_process_s=median_seconds(in_process_status, runs),
        imports_s=median_seconds(lambda: subprocess.run(imports, cwd=ROOT, check=True), runs),
        output=shown[0],
    )


# Reporting


def describe(space: SearchSpace, trials: int) -> str:
    objectives = len(space.search.objectives)
    kind = "one objective" if objectives == 1 else f"{objectives} objectives"
    target = space.search.target
    top = space.rung_budgets()[-1]
    beyond = "" if target is None else f", target {target.value / top[target.unit]:g}× the top rung"
    return f"{kind}, {trials:,} trials{beyond}"


def summary(label: str, made_s: float, decisions: Decisions, status: StatusTimes) -> list[str]:
    ok = "ok" if status.command_s < STATUS_GOAL_S else "MISSED"
    goal = f"(goal < {DECISION_GOAL_MS:.0f} ms)"
    return [
        f"generation ({label}): {made_s:.1f} s",
        f"restore ({label}): {decisions.restore_s:.2f} s (reading the trials "
        f"{decisions.read_s:.2f} s)",
        f"decide() ({label}): {decisions.decide.text()} {goal} {decisions.decide.verdict()}",
        f"result() ({label}): {decisions.result.text()}",
        f"decision with bookkeeping ({label}): {decisions.trial.text()} {goal} "
        f"{decisions.trial.verdict()}",
        f"forecast refit per result ({label}): "
        + (
            f"{decisions.refit.text()}, {decisions.genomes:,} genomes fitted"
            if decisions.refit.values
            else "none (the target is the top rung)"
        ),
        f"evo status ({label}): median {status.command_s:.2f} s (goal < {STATUS_GOAL_S:.0f} s) "
        f"{ok}; print_status in-process {status.in_process_s:.2f} s, imports "
        f"{status.imports_s:.2f} s",
    ]


def bench(path: str, root: Path, args: argparse.Namespace) -> list[str]:
    """Generate the space's run, measure it, print and return the summary lines."""
    name = Path(path).stem
    folder = root / name
    if (folder / "evo.db").exists():
        raise SystemExit(f"{folder / 'evo.db'} exists already; --keep needs a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    label = describe(bench_space(path, args.trials, args.beyond), args.trials)
    print(f"== {path} ({label})", flush=True)
    made_s = generate(path, name, folder, args)
    print(f"generated in {made_s:.1f} s; timing `evo status`", flush=True)
    status = measure_status(name, folder, args.status_runs)
    if args.show_status:
        print(status.output, flush=True)
    print("restarting the driver, then timing decisions", flush=True)
    lines = summary(label, made_s, measure_decisions(path, name, folder, args), status)
    print("\n".join(lines), flush=True)
    return lines


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            root = args.keep
            root.mkdir(parents=True, exist_ok=True)
        else:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="evo-scale-")))
        lines = [line for path in args.space for line in bench(path, root, args)]
    print("== summary", "\n".join(lines), sep="\n")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
