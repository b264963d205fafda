"""What a driver's lease costs its decisions: the driver's bookkeeping of one trial with
and without a lease held (every write then renews it first, in its transaction) and its
heartbeat thread running.

A run of `--trials` synthetic trials of tiny.yaml is stored first by the real loop
(`bench/scheduler_scale.py`'s `generate`: an executor that trains nothing), then one
driver makes `--decisions` more trials one at a time, each as the live loop makes it
(`_decide`, `started`, `finished` with a synthetic result), in blocks of `--block`
alternating between no lease and a lease with a heartbeat every `--heartbeat` seconds
(far more often than the default 20 s, to show the heartbeat's worst case), so that both
meet the same load. Prints the medians and 95th percentiles side by side, on SQLite in
a temporary folder on disk (or `--url`, an empty PostgreSQL database).

    python bench/lease_overhead.py
    python bench/lease_overhead.py --url postgresql+psycopg://evo@localhost/leases
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

from read_speed import copy_run
from scheduler_scale import SCRATCH, Clock, SyntheticExecutor, bench_space, generate, make_driver
from scheduler_scale import synthetic_outcome as synthetic

from evo.lease import RunLease
from evo.storage import Storage

SPACE = "search_spaces/tiny.yaml"
NAME = "leases"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=1000, help="trials stored before measuring")
    p.add_argument("--decisions", type=int, default=400, help="decisions timed, both ways")
    p.add_argument("--block", type=int, default=20, help="decisions in a row of one way")
    p.add_argument("--heartbeat", type=float, default=0.05, help="seconds between heartbeats")
    p.add_argument("--url", help="time on this (empty) database instead of a SQLite file")
    # What scheduler_scale.generate reads.
    p.add_argument("--workers", type=int, default=4, help="trials in flight while generating")
    p.add_argument("--seed", type=int, default=0, help="of the synthetic results")
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="where trials are generated")
    p.add_argument("--beyond", type=float, default=1.0, help=argparse.SUPPRESS)
    return p.parse_args()


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
    return f"median {statistics.median(ordered):6.2f} ms, p95 {p95:6.2f} ms"


def measure(storage: Storage, folder: Path, args: argparse.Namespace) -> dict[bool, list[float]]:
    space = bench_space(SPACE, args.trials + args.decisions + 1)
    executor = SyntheticExecutor(space, Clock(), 1, args.seed)
    driver = make_driver(space, NAME, storage, executor, folder)
    driver._restore()
    times: dict[bool, list[float]] = {False: [], True: []}
    for block in range(math.ceil(args.decisions / args.block)):
        leased = block % 2 == 1
        lease = RunLease(storage, NAME, interval=args.heartbeat) if leased else None
        if lease is not None:
            lease.__enter__()
        for _ in range(args.block):
            begun = time.perf_counter()
            job = driver._decide()
            assert job is not None, "the budget allows every timed decision"
            driver.started(job, 0)
            between = time.perf_counter()
            outcome = synthetic(job, space, args.seed, time.time())
            resumed = time.perf_counter()
            driver.finished(job, outcome)
            times[leased].append(1000 * (time.perf_counter() - resumed + between - begun))
        if lease is not None:
            lease.__exit__(None, None, None)
    return times


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="evo-leases-") as root:
        folder = Path(root)
        made = generate(SPACE, NAME, folder, args)
        url = f"sqlite:///{folder / 'evo.db'}"
        if args.url is not None:
            copy_run(url, args.url)  # as read_speed.py copies its run to PostgreSQL
            url = args.url
        with Storage(url, create=False) as storage:
            times = measure(storage, folder, args)
    where = "PostgreSQL" if args.url else "SQLite on disk"
    print(f"{args.trials} trials stored in {made:.0f} s; {where}; host {socket.gethostname()}")
    print(f"pid {os.getpid()}; per trial, the driver's bookkeeping (decide, start, finish):")
    print(f"  no lease:                      {percentiles(times[False])} ({len(times[False])})")
    beat = f"lease, heartbeat every {args.heartbeat:g} s:"
    print(f"  {beat:<31}{percentiles(times[True])} ({len(times[True])})")


if __name__ == "__main__":
    main()
