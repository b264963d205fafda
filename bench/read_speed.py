"""Read commands from a cold start: how long `evo --help`, `evo ls`, `evo status NAME` and
`evo export NAME` take, start to whole output, on a database of 10,000 trials.

The database is made once, in a temporary folder, by `bench/scheduler_scale.py`'s
synthetic run of `search_spaces/tiny.yaml` (the real steady-state loop, trials that
train nothing; a few minutes); `--keep PATH` keeps it there and a later run with the
same PATH reuses it, so that two versions of evo can be timed on one database:

    python bench/read_speed.py --keep /tmp/evo-reads
    PYTHONPATH=/path/to/other/checkout python bench/read_speed.py --keep /tmp/evo-reads

Each command runs as a fresh `python -m evo.cli` subprocess (the evo found on
PYTHONPATH), `--runs` times; the median wall and CPU times are printed beside those of
`python -c pass`, the floor any command pays to start Python. The goal is `evo status`
under 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scheduler_scale import SCRATCH, generate

ROOT = Path(__file__).resolve().parents[1]
SPACE = "search_spaces/tiny.yaml"
NAME = "reads"
STATUS_GOAL_S = 1.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=10_000, help="trials in the database")
    p.add_argument("--runs", type=int, default=5, help="subprocesses per command (median)")
    p.add_argument("--keep", type=Path, help="make the database here, or reuse the one there")
    # What scheduler_scale.generate reads.
    p.add_argument("--workers", type=int, default=4, help="trials in flight while generating")
    p.add_argument("--seed", type=int, default=0, help="of the synthetic results")
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="where trials are generated")
    return p.parse_args()


def cold_seconds(command: list[str], runs: int) -> tuple[float, float]:
    """The median wall time and CPU time (user and system) of `command` run `runs` times,
    each a fresh process. On a busy machine the CPU time is the steadier figure."""
    wall, cpu = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        wall.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(wall), statistics.median(cpu)


def commands(folder: Path) -> dict[str, list[str]]:
    evo = [sys.executable, "-m", "evo.cli"]
    storage = ["--storage", f"sqlite:///{folder / 'evo.db'}"]
    export = ["--out", str(folder / "trials.csv")]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "evo --help": [*evo, "--help"],
        "evo ls": [*evo, "ls", *storage],
        f"evo status {NAME}": [*evo, "status", NAME, *storage],
        f"evo export {NAME}": [*evo, "export", NAME, *storage, *export],
    }


def main() -> None:
    args = parse_args()
    import evo

    print(f"evo from {Path(evo.__file__).parent}; {os.cpu_count()} CPUs", flush=True)
    with contextlib.ExitStack() as stack:
        folder = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if not (folder / "evo.db").exists():
            print(f"making a run of {args.trials:,} trials in {folder}", flush=True)
            made = generate(SPACE, NAME, folder, args)
            print(f"made in {made:.0f} s", flush=True)
        for label, command in commands(folder).items():
            wall, cpu = cold_seconds(command, args.runs)
            goal = ""
            if label.startswith("evo status"):
                verdict = "ok" if wall < STATUS_GOAL_S else "MISSED"
                goal = f"  (goal < {STATUS_GOAL_S:.0f} s) {verdict}"
            line = f"{label:20} median of {args.runs}: {wall:.2f} s wall, {cpu:.2f} s CPU{goal}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
