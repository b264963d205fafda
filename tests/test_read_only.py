"""The read commands never write: `evo ls`, `status`, `report`, `export` and the dashboard
read a database they may not write (a file and folder made read-only, in WAL mode and
not) and leave it byte for byte as it was (where the folder is writable, a reader of a
database in WAL mode may leave the -wal and -shm files SQLite's readers need); a database
that needs an upgrade is left to the next write command, which a read command says."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import outcome, space_dict, write_corpus
from fastapi.testclient import TestClient

from evo.cli import main as evo
from evo.dashboard import build_app
from evo.storage import Storage
from evo.storage.models import SCHEMA_VERSION

RUN = "small"
SCHEMA_5 = Path(__file__).parent / "data" / "evo-schema-5.db"
READS = [["ls"], ["status", RUN], ["report", RUN], ["export", RUN]]


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make `paths` (files and folders) unwritable, as a user without write permission
    finds them. chmod does not stop root: as root they are made immutable too."""
    modes = {path: path.stat().st_mode for path in paths}
    root = os.geteuid() == 0
    if root and shutil.which("chattr") is None:
        pytest.fail("as root, a read-only file needs chattr (e2fsprogs) to be one", False)
    try:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
            if root:
                subprocess.run(["chattr", "+i", str(path)], check=True)
        yield
    finally:
        for path, mode in modes.items():
            if root:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            path.chmod(mode)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def make_database(folder: Path, journal: str) -> Path:
    """A database of one run with a done trial and its curve, left in `journal` mode with
    nothing beside it (no -wal, no -shm: its writer closed it)."""
    folder.mkdir()
    space = space_dict(write_corpus(folder.parent / "corpus"))
    path = folder / "evo.db"
    with Storage(f"sqlite:///{path}") as storage:
        storage.create_run(RUN, yaml.safe_dump(space), seed=0)
        genes = {"n_layers": 1, "d_model": 16, "n_heads": 1, "learning_rate": 0.001}
        trial = storage.add_trial(RUN, storage.genome_id(RUN, genes), generation=0)
        curve = [{"step": 1, "tokens": 64, "seconds": 0.5, "train_loss": 3.0}]
        storage.finish_trial(trial, outcome("done", {"bits_per_byte": 2.5, "curve": curve}))
    with contextlib.closing(sqlite3.connect(path)) as connection:
        (mode,) = connection.execute(f"PRAGMA journal_mode={journal}").fetchone()
    assert mode == journal and [p.name for p in folder.iterdir()] == ["evo.db"]
    return path


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_read_commands_read_a_read_only_database_and_change_nothing(workdir, capsys, journal):
    path = make_database(workdir / "db", journal)
    before = snapshot(path.parent)
    url = f"sqlite:///{path}"
    with read_only(path, path.parent):
        for command in READS:
            assert evo([*command, "--storage", url]) == 0, capsys.readouterr().err
            assert capsys.readouterr().err == ""
        client = TestClient(build_app(url))
        assert [run["name"] for run in client.get("/api/runs").json()] == [RUN]
        assert client.get(f"/runs/{RUN}/trials/1").status_code == 200
        assert snapshot(path.parent) == before
    assert (workdir / "results" / RUN / "report.html").exists()
    assert (workdir / "results" / RUN / "trials.csv").exists()


def test_a_read_only_storage_refuses_writes_and_makes_no_table(database_url):
    with Storage(database_url) as writer:
        writer.create_run(RUN, "model: {}\n", seed=0)
    with Storage(database_url, create=False, read_only=True) as reader:
        assert [run.name for run in reader.list_runs()] == [RUN]
        with pytest.raises(Exception, match=r"(?i)read-only|readonly"):
            reader.create_run("other", "model: {}\n", seed=0)
    with Storage(database_url, create=False) as writer:
        assert [run.name for run in writer.list_runs()] == [RUN]


@pytest.mark.parametrize("command", READS, ids=lambda command: command[0])
def test_a_read_command_leaves_an_old_schema_to_the_next_write_command(workdir, capsys, command):
    path = workdir / "evo.db"
    path.write_bytes(SCHEMA_5.read_bytes())
    before = snapshot(workdir)
    assert evo([*command, "--storage", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"has schema 5, this evo writes {SCHEMA_VERSION}" in err
    assert "the next `evo run`, `evo resume` or `evo promote` upgrades it" in err
    after = snapshot(workdir)
    assert after["evo.db"] == before["evo.db"]
    # A reader of a database in WAL mode (as this one is) needs its index beside it.
    assert set(after) - set(before) <= {"evo.db-wal", "evo.db-shm"}


def test_a_database_with_an_empty_schema_table_is_said_so_by_readers_and_writers(workdir, capsys):
    path = workdir / "evo.db"
    Storage(f"sqlite:///{path}").close()
    with contextlib.closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("DELETE FROM evo_schema")  # as a database being created has it
    url = f"sqlite:///{path}"
    for command in (["ls"], ["resume", "any"]):  # a reader, a writer
        assert evo([*command, "--storage", url]) == 2
        err = capsys.readouterr().err
        assert "has an empty evo_schema table: another evo is creating it" in err, err
        assert "upgrade evo-llm" not in err


def test_a_database_that_cannot_be_opened_is_one_line(workdir, capsys):
    path = workdir / "evo.db"
    path.write_bytes(b"not a database, though not empty either" * 100)
    assert evo(["status", RUN, "--storage", f"sqlite:///{path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot open the results database sqlite:///{path}" in err
