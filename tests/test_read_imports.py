"""The read commands start fast: `evo --help`, `ls`, `status`, `export` and the dashboard's
runs list load no torch, Ray or plotly, each run in a fresh Python; `--help` loads no
database library either, and what needs no frame (`--help`, `ls`, `status`) no pandas
or numpy.
A command that draws (`evo report`) loads plotly, which shows that the check sees it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import outcome, space_dict, write_corpus

from evo.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ray", "plotly", "pandas", "numpy", "sqlalchemy")
TABLES = {"sqlalchemy", "pandas", "numpy"}  # what a command that makes a frame loads
RUN = "small"


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database with a generational run of two trials, one done and one failed."""
    folder = tmp_path_factory.mktemp("reads")
    space = space_dict(write_corpus(folder / "corpus"))
    url = f"sqlite:///{folder / 'evo.db'}"
    with Storage(url) as storage:
        storage.create_run(RUN, yaml.safe_dump(space), seed=0)
        for layers, status in ((1, "done"), (2, "failed")):
            genes = {"n_layers": layers, "d_model": 16, "n_heads": 1, "learning_rate": 0.001}
            trial = storage.add_trial(RUN, storage.genome_id(RUN, genes), generation=0)
            storage.finish_trial(trial, outcome(status, {"bits_per_byte": 2.5, "device": "cpu"}))
    return url


def heavy_modules_after(code: str, folder: Path) -> set[str]:
    """Which of HEAVY are imported after `code` runs in a fresh Python, in `folder`."""
    report = f"import sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + "\n" + report],
        capture_output=True,
        text=True,
        cwd=folder,
        env={**os.environ, "PYTHONPATH": path},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1].split()
    assert last[0] == "loaded:", done.stdout
    return set(last[1:])


def evo_command(*argv: str) -> str:
    """Code that runs `evo ARGV` in-process and goes on (--help exits)."""
    return f"""
from evo.cli import main
try:
    assert main({list(argv)!r}) == 0
except SystemExit as stop:
    assert stop.code == 0
"""


@pytest.mark.parametrize(
    ("argv", "loaded"),
    [
        (["--help"], set()),
        (["ls"], {"sqlalchemy"}),
        (["status", RUN], {"sqlalchemy"}),
        (["export", RUN, "--out", "trials.csv"], TABLES),
    ],
    ids=["help", "ls", "status", "export"],
)
def test_read_commands_load_no_torch_ray_or_plotly_nor_what_they_do_not_read(
    argv: list[str], loaded: set[str], url: str, tmp_path: Path
) -> None:
    assert heavy_modules_after(evo_command(*argv, "--storage", url), tmp_path) == loaded


def test_the_dashboard_lists_runs_without_loading_torch_ray_or_plotly(
    url: str, tmp_path: Path
) -> None:
    code = f"""
from fastapi.testclient import TestClient
from evo.dashboard import build_app
from evo.storage import Storage
client = TestClient(build_app(Storage({url!r}, create=False, read_only=True)))
assert {RUN!r} in client.get("/").text
assert client.get("/api/runs/{RUN}").json()["trials"] == 2
"""
    assert heavy_modules_after(code, tmp_path) == TABLES


def test_a_report_draws_and_so_loads_plotly(url: str, tmp_path: Path) -> None:
    argv = ["report", RUN, "--out", "report.html", "--storage", url]
    assert heavy_modules_after(evo_command(*argv), tmp_path) == TABLES | {"plotly"}


def test_status_prints_its_header_before_it_reads_the_trials(url: str, tmp_path: Path) -> None:
    """The run's state is on screen before the trials are read (a fifth of a second at
    10,000 trials: bench/read_speed.py)."""
    code = f"""
import io, sys
from rich.console import Console
from evo.status import print_status
from evo.storage import Storage
read = []
class Counted(Storage):
    def trial_summaries(self, run):
        read.append(run)
        return super().trial_summaries(run)
writes = []
class Screen(io.StringIO):
    def write(self, text):
        writes.append((bool(read), text))
        return super().write(text)
print_status(Counted({url!r}, create=False, read_only=True), {RUN!r}, Console(file=Screen()))
before = "".join(text for loaded, text in writes if not loaded)
after = "".join(text for loaded, text in writes if loaded)
print(repr(before))
print(repr(after))
"""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    before, after = (eval(line) for line in done.stdout.splitlines()[-2:])
    assert before.startswith(f"{RUN}: ") and "trials:" not in before
    assert "trials: 1 done, 1 failed" in after
