"""Read commands from a cold start: how long `evo --help`, `evo ls`, `evo status NAME` and
`evo export NAME` take, start to whole output, on a database of 10,000 trials.

The database is made once, in a temporary folder, by `bench/scheduler_scale.py`'s
synthetic run of `search_spaces/tiny.yaml` (the real steady-state loop, trials that
train nothing; a minute or two); `--keep PATH` keeps it there and a later run with the
same PATH reuses it.

Each command runs as a fresh `python -m evo.cli` subprocess, `--runs` times, with this
checkout's evo and, given `--peer PATH`, alternately with the evo of another checkout
(e.g. the main branch), so that both meet the same load. The medians of the wall time to
the first line of output and to the end, and of the CPU time (user and system: on a busy
machine the steadier figure), are printed side by side, beside those of `python -c
pass`, the floor any command pays to start Python. The goal: `evo status`'s whole output
under 1 s; its first line (the header, printed before the trials load) comes sooner.

With `--url` (a PostgreSQL database: empty, or holding the run from an earlier time),
the run is copied there too and each command is timed on both databases, one after the
other. The URL's password is not put on the commands' line: it goes to them as
PGPASSWORD, which libpq reads (docs/storage.md).

    python bench/read_speed.py --keep /tmp/evo-reads --peer ../main
    python bench/read_speed.py --keep /tmp/evo-reads --url postgresql+psycopg://evo:PW@HOST/reads
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
from dataclasses import dataclass, field
from pathlib import Path

from scheduler_scale import SCRATCH, generate
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import URL, make_url

from evo.storage import Storage
from evo.storage.models import Base, SchemaRow

ROOT = Path(__file__).resolve().parents[1]
SPACE = "search_spaces/tiny.yaml"
NAME = "reads"
STATUS_GOAL_S = 1.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--trials", type=int, default=10_000, help="trials in the database")
    p.add_argument("--runs", type=int, default=5, help="subprocesses per command (median)")
    p.add_argument("--keep", type=Path, help="make the database here, or reuse the one there")
    p.add_argument("--peer", type=Path, help="another checkout of evo, timed beside this one")
    p.add_argument("--url", help="a PostgreSQL database to time the commands on too")
    # What scheduler_scale.generate reads.
    p.add_argument("--workers", type=int, default=4, help="trials in flight while generating")
    p.add_argument("--seed", type=int, default=0, help="of the synthetic results")
    p.add_argument("--scratch", type=Path, default=SCRATCH, help="where trials are generated")
    p.add_argument(
        "--beyond",
        type=float,
        default=1.0,
        metavar="F",
        help="the target F times the top rung: the run forecasts it (default 1: it does not)",
    )
    p.add_argument(
        "--peer-keep",
        type=Path,
        help="the peer's own database (made by its read_speed.py), for a peer of another "
        "schema (default: the same database)",
    )
    return p.parse_args()


@dataclass
class Times:
    """Seconds of the runs of one command with one checkout."""

    first: list[float] = field(default_factory=list)  # to the first line of output
    wall: list[float] = field(default_factory=list)  # to the end
    cpu: list[float] = field(default_factory=list)

    def text(self) -> str:
        first, wall = statistics.median(self.first), statistics.median(self.wall)
        cpu = statistics.median(self.cpu)
        return f"first line {first:5.2f} s, all {wall:5.2f} s wall, {cpu:5.2f} s CPU"


def run_once(
    command: list[str], checkout: Path, folder: Path, times: Times, password: str | None
) -> None:
    """Run `command` with `checkout`'s evo, in `folder` (not a checkout: `python -m` puts
    its working folder first on the path), adding to `times` the seconds to its first line
    of output and to its end, and its CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    if password:
        env["PGPASSWORD"] = password
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE) as process:
        assert process.stdout is not None
        process.stdout.readline()
        times.first.append(time.perf_counter() - started)
        process.stdout.read()
    times.wall.append(time.perf_counter() - started)
    if process.returncode:
        raise subprocess.CalledProcessError(process.returncode, command)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    times.cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)


def commands(folder: Path, url: str) -> dict[str, list[str]]:
    evo = [sys.executable, "-m", "evo.cli"]
    storage = ["--storage", url]
    export = ["--out", str(folder / "trials.csv")]
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "evo --help": [*evo, "--help"],
        "evo ls": [*evo, "ls", *storage],
        f"evo status {NAME}": [*evo, "status", NAME, *storage],
        f"evo export {NAME}": [*evo, "export", NAME, *storage, *export],
    }


def measure(folder: Path, url: str, args: argparse.Namespace) -> None:
    """Time the commands on the database at `url` (its password, if any, as PGPASSWORD)."""
    checkouts = {"this": ROOT, **({"peer": args.peer.resolve()} if args.peer else {})}
    given = make_url(url)
    print(f"{given.get_backend_name()}: {given.render_as_string(hide_password=True)}")
    # A peer of another schema reads its own SQLite copy of the run (--peer-keep).
    folders = {"this": folder, "peer": args.peer_keep or folder}
    for name, checkout in checkouts.items():
        print(f"{name}: {checkout}, working in {folders[name]}", flush=True)
    bare = URL.create(
        given.drivername, given.username, None, given.host, given.port, given.database
    ).render_as_string(hide_password=False)
    urls = {"this": bare, "peer": bare}
    if args.peer_keep and given.get_backend_name() == "sqlite":
        urls["peer"] = f"sqlite:///{args.peer_keep / 'evo.db'}"
    for label in commands(folder, bare):
        times = {name: Times() for name in checkouts}
        for _ in range(args.runs):
            for name, checkout in checkouts.items():
                command = commands(folders[name], urls[name])[label]
                run_once(command, checkout, folders[name], times[name], given.password)
        line = " | ".join(f"{name} {times[name].text()}" for name in checkouts)
        if label.startswith("evo status"):
            whole = statistics.median(times["this"].wall)
            verdict = "ok" if whole < STATUS_GOAL_S else "MISSED"
            line += f"  (goal: the whole output in < {STATUS_GOAL_S:.0f} s: {verdict})"
        print(f"{label:17} {line}", flush=True)


def copy_run(source: str, target: str) -> None:
    """Copy evo's tables from the database at `source` into the one at `target` (made
    evo's by `Storage`), ids as they are; each id sequence then moves past them. Nothing
    is copied when the target holds the run already."""
    Storage(target).close()
    reading, writing = create_engine(source), create_engine(target)
    with reading.connect() as rows, writing.begin() as out:
        if out.execute(text("SELECT COUNT(*) FROM evo_runs WHERE name = :n"), {"n": NAME}).scalar():
            return
        for table in Base.metadata.sorted_tables:
            if table.name == SchemaRow.__tablename__:
                continue
            batch = [dict(row) for row in rows.execute(select(table)).mappings()]
            if batch:
                out.execute(insert(table), batch)
            if "id" in table.c:
                out.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE(MAX(id), 0) + 1, false) FROM {table.name}"
                    )
                )
    reading.dispose()
    writing.dispose()


def main() -> None:
    args = parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} CPUs, load average {load}; medians of {args.runs} runs", flush=True)
    with contextlib.ExitStack() as stack:
        folder = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if not (folder / "evo.db").exists():
            print(f"making a run of {args.trials:,} trials in {folder}", flush=True)
            made = generate(SPACE, NAME, folder, args)
            print(f"made in {made:.0f} s", flush=True)
        sqlite = f"sqlite:///{folder / 'evo.db'}"
        measure(folder, sqlite, args)
        if args.url:
            copy_run(sqlite, args.url)
            measure(folder, args.url, args)


if __name__ == "__main__":
    main()
