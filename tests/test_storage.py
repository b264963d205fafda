"""The results database: round trips, resumption support, migrations, and concurrent
readers, on SQLite and on PostgreSQL (each test taking `store` or `database_url` runs once
with each; see tests/conftest.py)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import (
    outcome,
    replayed_decisions,
    run_steady_search,
    search_history,
    steady_space_dict,
)
from rich.console import Console
from sqlalchemy import DateTime, Integer, MetaData, create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

from evo.cli import main as evo
from evo.metrics import METRICS, TrialStatus
from evo.space import load_space
from evo.status import print_status
from evo.storage import (
    SCHEMA_VERSION,
    ForecastRecord,
    PredictionRecord,
    Spent,
    Storage,
    genome_hash,
)
from evo.storage.store import HEAD_REVISION, MIGRATIONS
from llm.errors import UserError
from llm.trial import CurvePoint, TrialEnd, TrialResult

SCHEMA_1 = Path(__file__).parent / "data" / "evo-schema-1.db"  # written by evo-llm 0.1
# Written by evo at schema 5 (commit ac33fae), when each metric was a column of evo_trials:
# a done trial with every metric, an invalid one, a retried attempt and its interrupted
# retry, a validation, a promotion, a session and a generation.
SCHEMA_5 = Path(__file__).parent / "data" / "evo-schema-5.db"

SPACE = "model:\n  n_layers: {choice: [2, 4]}\n"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "evo.db"


@pytest.fixture
def store(database_url: str) -> Iterator[Storage]:
    with Storage(database_url) as storage:
        yield storage


def old_database(file: Path, url: str) -> str:
    """Put what the SQLite `file` written by an older evo holds into the empty database
    at `url`, as that evo left it: for SQLite a copy of the file; for PostgreSQL its
    tables, keys and rows re-created there (every timestamp evo writes is UTC, and ids
    keep their values: each table's id sequence moves past them)."""
    if make_url(url).get_backend_name() == "sqlite":
        Path(make_url(url).database).write_bytes(file.read_bytes())
        return url
    source, target = create_engine(f"sqlite:///{file}"), create_engine(url)
    tables = MetaData()
    tables.reflect(source)
    for column in (c for table in tables.tables.values() for c in table.columns):
        generic = column.type.as_generic()
        column.type = DateTime(timezone=True) if isinstance(generic, DateTime) else generic
    with source.connect() as reading, target.begin() as writing:
        tables.create_all(writing)
        for table in tables.sorted_tables:
            rows = [_utc(dict(row)) for row in reading.execute(table.select()).mappings()]
            if rows:
                writing.execute(table.insert(), rows)
            if "id" in table.c and isinstance(table.c.id.type, Integer):
                writing.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), "
                        f"COALESCE(MAX(id), 0) + 1, false) FROM {table.name}"
                    )
                )
    source.dispose()
    target.dispose()
    return url


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite keeps evo's UTC timestamps without their zone: give it back."""
    return {
        key: value.replace(tzinfo=timezone.utc)
        if isinstance(value, datetime) and value.tzinfo is None
        else value
        for key, value in row.items()
    }


def _scalars(url: str, query: str) -> list[Any]:
    engine = create_engine(url)
    with engine.connect() as connection:
        found = list(connection.execute(text(query)))
    engine.dispose()
    return [row[0] if len(row) == 1 else tuple(row) for row in found]


def _columns(url: str) -> dict[str, list[str]]:
    """Each table's column names."""
    engine = create_engine(url)
    with engine.connect() as connection:
        found = inspect(connection)
        tables = found.get_table_names()
        columns = {t: sorted(c["name"] for c in found.get_columns(t)) for t in tables}
    engine.dispose()
    return columns


def _orphans(url: str) -> list[str]:
    """The rows whose foreign key points at no row (what SQLite's foreign_key_check
    finds; PostgreSQL enforces the keys, and this must find nothing there either)."""
    engine = create_engine(url)
    found = []
    with engine.connect() as connection:
        schema = inspect(connection)
        for table in schema.get_table_names():
            for key in schema.get_foreign_keys(table):
                (child,), (parent,) = key["constrained_columns"], key["referred_columns"]
                referred = key["referred_table"]
                count = connection.scalar(
                    text(
                        f"SELECT COUNT(*) FROM {table} c LEFT JOIN {referred} p "
                        f"ON c.{child} = p.{parent} "
                        f"WHERE c.{child} IS NOT NULL AND p.{parent} IS NULL"
                    )
                )
                if count:
                    found.append(f"{table}.{child}: {count}")
    engine.dispose()
    return found


def full_result() -> TrialResult:
    """A result with every field set, including a two-stage curve and pretrain metrics."""
    return TrialResult(
        status=TrialEnd.DONE,
        metrics={
            "val_loss": 2.5,
            "perplexity": 12.18,
            "bits_per_byte": 1.25,
            "accuracy": 0.41,
            "train_tokens_per_s": 1234.5,
            "decode_tokens_per_s": 88.0,
            "params": 3_000_000_000,  # beyond 32 bits
            "params_non_embedding": 2_500_000,
            "flops_per_token": 18_000_000_000,
            "peak_memory_bytes": 7_000_000_000,
            "wall_seconds": 61.5,
            "steps": 200,
            "tokens": 409_600,
        },
        device="cuda:0",
        error=None,
        curve=[
            CurvePoint(step=100, tokens=204_800, seconds=30.0, train_loss=3.1, val_loss=3.0),
            CurvePoint(step=200, tokens=409_600, seconds=60.0, train_loss=2.6),
            CurvePoint(step=50, tokens=1024, seconds=5.0, train_loss=2.4, stage="adapt"),
        ],
        pretrain={"val_loss": 2.9, "bits_per_byte": 1.4},
    )


def test_runs_are_created_listed_and_updated(store: Storage) -> None:
    run = store.create_run("alpha", SPACE, seed=7)
    assert run.status == "running"
    assert run.seed == 7 and run.space_yaml == SPACE
    assert run.space_sha256 != store.create_run("beta", SPACE + "#\n", seed=7).space_sha256
    assert run.version == importlib.metadata.version("evo-llm")
    assert run.generation is None
    assert run.created_at.tzinfo is not None

    with pytest.raises(UserError, match="'alpha' already exists"):
        store.create_run("alpha", SPACE, seed=1)
    assert [r.name for r in store.list_runs()] == ["alpha", "beta"]

    store.set_run_status("alpha", "interrupted")
    stored = store.get_run("alpha")
    assert stored is not None and stored.status == "interrupted"
    assert stored.updated_at > stored.created_at
    assert stored.updated_at.tzinfo == timezone.utc
    assert store.get_run("missing") is None
    with pytest.raises(ValueError, match="not a valid RunStatus"):
        store.set_run_status("alpha", "paused")
    with pytest.raises(UserError, match="no run named 'missing'"):
        store.set_run_status("missing", "failed")


def test_sqlite_parent_folder_is_created(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "evo.db"
    with Storage(f"sqlite:///{path}") as storage:
        storage.create_run("r", SPACE, seed=0)
    assert path.is_file()


def test_genome_ids_are_idempotent_and_canonical(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    store.create_run("other", SPACE, seed=0)
    first = store.genome_id("r", {"n_layers": 4, "lr": 0.1, "norm": "rmsnorm"})
    assert store.genome_id("r", {"norm": "rmsnorm", "lr": 1e-1, "n_layers": 4}) == first
    assert (
        store.genome_id("r", {"lr": np.float64(0.1), "n_layers": np.int64(4), "norm": "rmsnorm"})
        == first
    )
    # 0.1 + 0.2 is not 0.3 as a float; the repr keeps them apart.
    assert store.genome_id("r", {"n_layers": 4, "lr": 0.1 + 0.2, "norm": "rmsnorm"}) != (
        store.genome_id("r", {"n_layers": 4, "lr": 0.3, "norm": "rmsnorm"})
    )
    assert store.genome_id("other", {"n_layers": 4, "lr": 0.1, "norm": "rmsnorm"}) != first
    assert genome_hash({"a": 1, "b": 2.5}) == genome_hash({"b": 2.5, "a": 1})
    assert genome_hash({"a": 1}) != genome_hash({"a": 2})

    genomes = store.genomes("r")
    assert len(genomes) == 3
    assert genomes[first] == {"n_layers": 4, "lr": 0.1, "norm": "rmsnorm"}


def test_trial_lifecycle_round_trips_metrics_and_curve(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    genome = store.genome_id("r", {"n_layers": 2})
    trial_id = store.add_trial("r", genome, generation=3, attempt=1)
    (queued,) = store.trials("r")
    assert (queued.id, queued.status, queued.generation, queued.attempt) == (
        trial_id,
        "queued",
        3,
        1,
    )
    assert queued.started_at is None and queued.metric("val_loss") is None

    store.mark_running(trial_id, host="node1", device="cuda:1", worker="w-3")
    (running,) = store.trials("r")
    assert (running.status, running.host, running.device, running.worker) == (
        "running",
        "node1",
        "cuda:1",
        "w-3",
    )
    assert running.started_at is not None and running.finished_at is None

    result = full_result()
    assert set(result.metrics) == set(METRICS), "a result with every metric of the registry"
    store.finish_trial(trial_id, outcome("done", result, lent_seconds=12.5))
    (done,) = store.trials("r")
    assert done.status == "done"
    assert store.trials_frame("r")["lent_seconds"].tolist() == [12.5]
    for name in METRICS:
        assert done.metric(name) == pytest.approx(result.metric(name)), name
    assert done.metric("params") == 3_000_000_000 and isinstance(done.metrics["params"], int)
    assert done.metric("val_loss") == 2.5
    assert done.device == "cuda:0"  # the device the trial reports having used
    assert done.pretrain == {"val_loss": 2.9, "bits_per_byte": 1.4}
    assert done.error is None
    assert done.finished_at is not None and done.finished_at >= done.started_at
    assert [CurvePoint(**point) for point in store.curve(trial_id)] == result.curve

    # Finishing again (a retried write) replaces the curve rather than duplicating it.
    failed = TrialResult(status="failed", error="CUDA out of memory", curve=result.curve[:1])
    store.finish_trial(trial_id, outcome("failed", failed))
    (again,) = store.trials("r")
    assert (again.status, again.error, again.metric("val_loss")) == (
        "failed",
        "CUDA out of memory",
        None,
    )
    assert len(store.curve(trial_id)) == 1


def test_bad_trial_writes_are_refused(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    store.create_run("other", SPACE, seed=0)
    trial_id = store.add_trial("r", store.genome_id("r", {"x": 1}), generation=0)
    with pytest.raises(ValueError, match="must be one of"):
        store.finish_trial(trial_id, outcome("running", {}))
    with pytest.raises(ValueError, match="'surprise'"):
        store.finish_trial(trial_id, outcome("done", {"surprise": 1.0}))
    with pytest.raises(ValueError, match="not part of run"):
        store.add_trial("other", store.genome_id("r", {"x": 1}), generation=0)
    with pytest.raises(ValueError, match="no trial with id 999"):
        store.mark_running(999, host="h", device="cpu")
    assert store.trials("r")[0].status == "queued"


def test_finished_result_is_the_latest_terminal_trial(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    genome = store.genome_id("r", {"n_layers": 2})
    other = store.genome_id("r", {"n_layers": 4})
    first = store.add_trial("r", genome, generation=0)
    assert store.finished_result("r", genome) is None
    store.mark_running(first, host="h", device="cpu")
    assert store.finished_result("r", genome) is None

    store.finish_trial(first, outcome("timeout", {"error": "timed out after 60 s"}))
    reused = store.finished_result("r", genome)
    assert reused is not None and (reused.id, reused.status) == (first, "timeout")

    second = store.add_trial("r", genome, generation=1, attempt=1)
    store.finish_trial(second, outcome("done", full_result()))
    reused = store.finished_result("r", genome)
    assert reused is not None and (reused.id, reused.metric("val_loss")) == (second, 2.5)
    assert store.finished_result("r", other) is None


def test_opening_without_create_refuses_a_missing_sqlite_file(tmp_path: Path) -> None:
    missing = tmp_path / "sub" / "typo.db"
    with pytest.raises(UserError, match=f"no evo database at {missing}"):
        Storage(f"sqlite:///{missing}", create=False)
    assert not missing.parent.exists()

    Storage(f"sqlite:///{missing}").close()
    with Storage(f"sqlite:///{missing}", create=False) as existing:
        assert existing.list_runs() == []
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with Storage(memory, create=False) as in_memory:
            assert in_memory.list_runs() == []


def test_interrupted_trials_stay_in_the_history(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    store.create_run("other", SPACE, seed=0)
    genomes = [store.genome_id("r", {"n": n}) for n in range(3)]
    done, running, queued = (store.add_trial("r", g, generation=0) for g in genomes)
    store.finish_trial(done, outcome("done", full_result()))
    store.mark_running(running, host="h", device="cpu")
    untouched = store.add_trial("other", store.genome_id("other", {"n": 0}), generation=0)

    interrupted = store.interrupt_active("r")
    assert [t.id for t in interrupted] == [running, queued]
    statuses = {t.id: t.status for t in store.trials("r")}
    assert statuses == {done: "done", running: "interrupted", queued: "interrupted"}
    assert store.finished_result("r", genomes[1]) is None  # so it is trained again
    assert len(store.curve(done)) == 3
    assert [t.status for t in store.trials("other")] == ["queued"] and untouched
    assert store.interrupt_active("r") == []


def test_a_lost_attempt_is_kept_as_retried_beside_its_retry(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    genome = store.genome_id("r", {"n": 0})
    first = store.add_trial("r", genome, rung=1, decision=7, seen=3, budget={"max_steps": 9})
    store.mark_running(first, host="h", device="cpu")
    second = store.retry_trial(first, "worker lost: WorkerCrashedError")
    lost, retry = store.trials("r")
    assert (lost.id, lost.status, lost.error) == (
        first,
        "retried",
        "worker lost: WorkerCrashedError",
    )
    assert (retry.id, retry.status, retry.attempt) == (second, "queued", 1)
    same = ("genome_id", "rung", "decision", "seen", "budget")
    assert [getattr(retry, key) for key in same] == [getattr(lost, key) for key in same]
    assert store.finished_result("r", genome, rung=1) is None  # a lost attempt is no result
    store.finish_trial(second, outcome("done", full_result()))
    found = store.finished_result("r", genome, rung=1)
    assert found is not None and found.id == second
    assert store.finished_result("r", genome, rung=0) is None


def test_trial_counts_count_every_row_of_each_run(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    store.create_run("other", SPACE, seed=0)
    store.create_run("empty", SPACE, seed=0)
    genomes = [store.genome_id("r", {"n": n}) for n in range(2)]
    first = store.add_trial("r", genomes[0])
    store.mark_running(first, host="h", device="cpu")
    store.retry_trial(first, "worker lost")  # a retried attempt is a row too
    store.add_trial("r", genomes[1])
    store.add_trial("other", store.genome_id("other", {"n": 0}))
    assert store.trial_counts() == {"r": 3, "other": 1}
    assert store.trial_counts()["r"] == len(store.trials("r"))


def test_a_postgres_database_without_a_locale_reads_back_text(postgres: Any) -> None:
    """A cluster made without a locale is SQL_ASCII, where psycopg returns text as bytes
    unless the connection says UTF-8: evo's does."""
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    name = f"evo_ascii_{os.getpid()}"
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(
            text(
                f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' "
                "TEMPLATE template0"
            )
        )
    url = postgres.set(database=name).render_as_string(hide_password=False)
    try:
        with Storage(url) as store:
            store.create_run("ascii", SPACE, seed=0)
            genome = store.genome_id("ascii", {"pos_encoding": "rope", "note": "ünïcode"})
            assert store.genomes("ascii")[genome]["note"] == "ünïcode"
            assert [run.name for run in store.list_runs()] == ["ascii"]
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_results_are_numbered_in_the_order_they_are_recorded(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    store.create_run("other", SPACE, seed=0)
    trials = [store.add_trial("r", store.genome_id("r", {"n": n})) for n in range(3)]
    assert [t.decision for t in store.trials("r")] == trials  # a decision of its own each
    other = store.add_trial("other", store.genome_id("other", {"n": 0}))
    assert store.finish_trial(trials[2], outcome("done", {})) == 1
    assert store.finish_trial(other, outcome("done", {})) == 1  # numbered within its own run
    assert store.finish_trial(trials[0], outcome("failed", {"error": "x"})) == 2
    recorded = {t.id: t.recorded for t in store.trials("r")}
    assert recorded == {trials[0]: 2, trials[1]: None, trials[2]: 1}
    # A result is a change to the run: `updated` in status, report and dashboard follows.
    before = store.require_run("r").updated_at
    store.finish_trial(trials[1], outcome("done", {}))
    assert store.require_run("r").updated_at > before


def test_spent_counts_training_time_and_decisions(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    assert store.spent("r") == Spent(0, 0, 0.0, 0)
    genome = store.genome_id("r", {"n": 0})
    first = store.add_trial("r", genome, decision=0)
    store.finish_trial(first, outcome("done", {"steps": 10, "tokens": 640, "wall_seconds": 2.5}))
    lost = store.add_trial("r", genome, rung=1, decision=1)
    store.mark_running(lost, host="h", device="cpu")
    retry = store.retry_trial(lost, "worker lost")
    store.finish_trial(retry, outcome("done", {"steps": 20, "tokens": 1280, "wall_seconds": 4.0}))
    interrupted = store.add_trial("r", genome, rung=2, decision=2)
    store.mark_running(interrupted, host="h", device="cpu")
    (cut,) = store.interrupt_active("r")  # a killed driver: it stopped at the last record
    spent = store.spent("r")
    # The lost attempts' time counts (what they had run); their steps are not known.
    lost_seconds = [
        t.metric("wall_seconds") for t in store.trials("r") if t.id in (lost, interrupted)
    ]
    assert all(seconds is not None and seconds >= 0 for seconds in lost_seconds)
    assert cut.finished_at is not None and cut.finished_at >= cut.started_at
    assert (spent.steps, spent.tokens, spent.trials) == (30, 1920, 3)
    assert spent.worker_seconds == pytest.approx(6.5 + sum(lost_seconds))


def test_checkpoints_and_sessions_are_recorded(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    trial = store.add_trial("r", store.genome_id("r", {"n": 0}))
    store.finish_trial(trial, outcome("done", {}), checkpoint="genome-1/rung-0")
    assert store.trials("r")[0].checkpoint == "genome-1/rung-0"
    store.forget_checkpoint(trial)
    assert store.trials("r")[0].checkpoint is None
    session = store.start_session("r", workers=2)
    (record,) = store.run_sessions("r")
    assert (record.workers, record.ended_at) == (2, None)
    store.end_session(session)
    assert store.run_sessions("r")[0].ended_at is not None


def test_a_schema_1_database_is_upgraded_keeping_its_history(
    new_database: Callable[[], str],
) -> None:
    url = old_database(SCHEMA_1, new_database())
    with sqlite3.connect(SCHEMA_1) as old:
        old_trials = old.execute("SELECT id, status, bits_per_byte FROM evo_trials").fetchall()
        old_curves = old.execute("SELECT COUNT(*) FROM evo_curve_points").fetchone()[0]
    old.close()
    with Storage(url, create=False) as store:
        runs = {run.name: run for run in store.list_runs()}
        assert {name: run.status for name, run in runs.items()} == {
            "two": "finished",
            "space": "running",
        }
        for run in runs.values():  # the default mode changed; old runs were generational
            assert yaml.safe_load(run.space_yaml)["search"]["mode"] == "generational"
        trials = [t for name in runs for t in store.trials(name)]
        assert sorted((t.id, t.status, t.metric("bits_per_byte")) for t in trials) == sorted(
            old_trials
        )
        assert all(t.rung == 0 and t.decision == t.id for t in trials)
        assert all((t.recorded == t.id) == t.status.is_result for t in trials)
        assert sum(len(store.curve(t.id)) for t in trials) == old_curves
        (promotion,) = store.promotions("two")
        assert promotion.status == "finished"
        # evo-llm 0.1 named the validation loss `loss` and the tokens it scored `tokens`.
        assert promotion.metrics == {
            "val_loss": pytest.approx(2.9455858),
            "perplexity": pytest.approx(19.0218028),
            "bits_per_byte": pytest.approx(4.2517186),
            "accuracy": pytest.approx(0.1783920),
            "eval_tokens": 1990,
            "steps": 3,
        }
        # Those trials trained on a CPU, where no peak memory of a trial is measured.
        assert all(t.device == "cpu" and t.metric("peak_memory_bytes") is None for t in trials)
        assert all(run.unigram_bits_per_byte is None for run in runs.values())
    assert _scalars(url, "SELECT version FROM evo_schema") == [SCHEMA_VERSION]
    assert _orphans(url) == []
    # Each run counts the results it recorded, so the next one is numbered after them.
    counts = dict(_scalars(url, "SELECT name, results FROM evo_runs"))
    last = {t.genome_id: t.recorded for t in trials if t.recorded is not None}
    assert sum(counts.values()) > 0 and max(counts.values()) == max(last.values())
    Storage(url, create=False).close()  # a second open changes nothing
    fresh = new_database()
    Storage(fresh).close()
    assert _columns(url) == _columns(fresh)  # migrated = created anew


def test_a_sqlite_file_is_copied_aside_before_it_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "evo.db"
    path.write_bytes(SCHEMA_1.read_bytes())
    Storage(f"sqlite:///{path}", create=False).close()
    backup = tmp_path / "evo.db.schema-1.bak"
    assert backup.read_bytes()[:16] == b"SQLite format 3\x00"
    with sqlite3.connect(backup) as kept:
        assert kept.execute("SELECT version FROM evo_schema").fetchone() == (1,)
    kept.close()
    Storage(f"sqlite:///{path}", create=False).close()  # a second open changes nothing
    assert not (tmp_path / "evo.db.schema-2.bak").exists()


def test_a_schema_5_database_keeps_every_metric_value_as_a_row(
    new_database: Callable[[], str],
) -> None:
    url = old_database(SCHEMA_5, new_database())
    columns = ", ".join(METRICS)  # schema 5 had a column of each metric of today
    with sqlite3.connect(SCHEMA_5) as old:
        old_values = old.execute(f"SELECT id, {columns} FROM evo_trials ORDER BY id").fetchall()
        old_sums = old.execute(
            "SELECT SUM(steps), SUM(tokens), SUM(wall_seconds), COUNT(DISTINCT decision) "
            "FROM evo_trials"
        ).fetchone()
        old_frame = pd.read_sql(f"SELECT {columns} FROM evo_trials ORDER BY id", old)
    old.close()
    with Storage(url, create=False) as store:
        trials = store.trials("five")
        assert [t.id for t in trials] == [row[0] for row in old_values]
        for trial, (_, *values) in zip(trials, old_values, strict=True):
            stored = {name: v for name, v in zip(METRICS, values, strict=True) if v is not None}
            assert trial.metrics == stored, trial.id
            assert all(type(trial.metrics[n]) is type(v) for n, v in stored.items()), trial.id
        assert [t.status for t in trials] == ["done", "invalid", "retried", "interrupted"]
        assert trials[0].metrics["params"] == 3_000_000_000 and trials[0].pretrain is not None
        assert store.spent("five") == Spent(*old_sums)
        frame = store.trials_frame("five")
        pd.testing.assert_frame_equal(frame[list(METRICS)], old_frame, check_dtype=False)
        assert frame["lent_seconds"].tolist()[0] == 12.5
        assert len(store.curve(trials[0].id)) == 1
        (validation,) = store.validations("five")
        assert validation.metric("bits_per_byte") == 1.25
        assert store.finished_result("five", trials[0].genome_id) == trials[0]
        # Schema 7 adds a run's forecast and the size of its training split: none yet.
        assert store.forecast("five") is None
        assert store.require_run("five").train_tokens is None
        store.set_train_tokens("five", 4_400_000)
        assert store.require_run("five").train_tokens == 4_400_000
        # The upgraded database takes new rows: ids follow the old ones.
        genome = store.genome_id("five", {"n_layers": 99})
        assert store.add_trial("five", genome) > max(t.id for t in trials)
    assert _scalars(url, "SELECT version FROM evo_schema") == [SCHEMA_VERSION]
    assert _orphans(url) == []
    fresh = new_database()
    Storage(fresh).close()
    assert _columns(url) == _columns(fresh)  # migrated = created anew


def test_the_migrations_end_at_this_evos_schema_version() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head == HEAD_REVISION and int(head) == SCHEMA_VERSION


def forecast_of(predictions: dict[int, float], alpha: float = 0.3) -> ForecastRecord:
    return ForecastRecord(
        metric="bits_per_byte",
        budget={"max_tokens": 4_000_000},
        level=0.8,
        alpha=alpha,
        law_error=0.5,
        noise=0.02,
        noise_source="residuals",
        check={"genomes": 3, "law_error": 0.4, "mean_error": 0.01, "tau": None, "tau_naive": 0.3},
        predictions={
            genome: PredictionRecord(mean, mean - 0.1, mean + 0.1, 0.05, False)
            for genome, mean in predictions.items()
        },
    )


def test_a_result_stores_the_forecast_refitted_with_it_in_its_transaction(
    store: Storage,
) -> None:
    store.create_run("r", SPACE, seed=0)
    store.create_run("other", SPACE, seed=0)
    a, b = (store.genome_id("r", {"n_layers": n}) for n in (2, 4))
    first, second, third = (store.add_trial("r", g, rung=0) for g in (a, b, a))
    assert store.forecast("r") is None
    store.finish_trial(
        first, outcome("done", {"bits_per_byte": 2.0}), forecast=forecast_of({a: 1.5})
    )
    stored = store.forecast("r")
    assert stored == dataclasses.replace(forecast_of({a: 1.5}), recorded=1)
    # The next one replaces it whole: the predictions of the genomes it holds, its fit.
    later = forecast_of({b: 1.4}, alpha=0.25)
    store.finish_trial(second, outcome("done", {"bits_per_byte": 2.1}), forecast=later)
    assert store.forecast("r") == dataclasses.replace(later, recorded=2)
    assert store.forecast("other") is None
    # A result without a refit (a failure) leaves the forecast as it was.
    store.finish_trial(third, outcome("failed", {}))
    assert store.forecast("r") == dataclasses.replace(later, recorded=2)
    # A forecast that cannot be stored (a genome that does not exist) takes its result
    # with it: the two are one transaction.
    retry = store.add_trial("r", b, rung=1)
    with pytest.raises(IntegrityError):
        store.finish_trial(
            retry, outcome("done", {"bits_per_byte": 1.9}), forecast=forecast_of({999: 1.0})
        )
    assert store.trials("r")[-1].status == "queued" and store.trials("r")[-1].recorded is None
    assert store.forecast("r") == dataclasses.replace(later, recorded=2)


def test_a_run_keeps_its_unigram_baseline(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    assert store.require_run("r").unigram_bits_per_byte is None
    store.set_unigram_baseline("r", 4.7)
    assert store.require_run("r").unigram_bits_per_byte == 4.7


def test_generation_round_trip_restores_the_rng(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    ids = [store.genome_id("r", {"n": n}) for n in range(3)]
    rng = random.Random(1234)
    rng.random()
    store.save_generation("r", 0, [ids[0], ids[1]], rng.getstate(), {"min": 1.0})
    rng.random()
    population = [ids[2], ids[0], ids[2]]  # duplicates keep their slots
    stats = {"min": np.float64(2.5), "max": float("nan"), "counts": np.array([1, 2])}
    store.save_generation("r", 1, population, rng.getstate(), stats)
    expected = [rng.random() for _ in range(5)]

    record = store.last_generation("r")
    assert record is not None
    assert (record.generation, record.genome_ids) == (1, population)
    assert record.stats == {"min": 2.5, "max": None, "counts": [1, 2]}
    fresh = random.Random()
    fresh.setstate(record.rng_state)
    assert [fresh.random() for _ in range(5)] == expected

    # A resumed run saving generation 1 again replaces it in one piece.
    store.save_generation("r", 1, [ids[1]], rng.getstate(), {"min": 3.0})
    assert [(g.generation, g.genome_ids, g.stats) for g in store.generations("r")] == [
        (0, [ids[0], ids[1]], {"min": 1.0}),
        (1, [ids[1]], {"min": 3.0}),
    ]
    run = store.get_run("r")
    assert run is not None and run.generation == 1
    assert store.last_generation("r") is not None
    store.create_run("empty", SPACE, seed=0)
    assert store.last_generation("empty") is None and store.generations("empty") == []


def test_promotions_round_trip(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    genome = store.genome_id("r", {"n": 1})
    promotion = store.record_promotion("r", genome, "out/best", "running", None)
    store.update_promotion(promotion, "done", {"val_loss": 2.0})
    store.update_promotion(promotion, "published", None)  # None keeps the metrics
    (record,) = store.promotions("r")
    assert (record.id, record.genome_id, record.out_dir) == (promotion, genome, "out/best")
    assert (record.status, record.metrics) == ("published", {"val_loss": 2.0})
    assert record.updated_at >= record.created_at


def test_trials_frame_has_a_column_per_gene_and_metric(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    assert list(store.trials_frame("r").columns[:7]) == [
        "trial_id",
        "generation",
        "rung",
        "decision",
        "attempt",
        "status",
        "genome_id",
    ]
    small = store.genome_id("r", {"n_layers": 2, "lr": 0.01})
    lora = store.genome_id("r", {"n_layers": 4, "lr": 0.02, "lora_rank": 8})
    finished = store.add_trial("r", small, generation=0)
    store.finish_trial(finished, outcome("done", full_result()))
    store.add_trial("r", lora, generation=1)

    frame = store.trials_frame("r")
    assert list(frame["trial_id"]) == [finished, finished + 1]
    assert list(frame["status"]) == ["done", "queued"]
    assert {"gene.n_layers", "gene.lr", "gene.lora_rank"} <= set(frame.columns)
    assert {"pretrain.val_loss", "pretrain.bits_per_byte", "error", "started_at"} <= set(
        frame.columns
    )
    assert set(METRICS) <= set(frame.columns)
    assert all(pd.api.types.is_numeric_dtype(frame[name]) for name in METRICS)
    assert frame.loc[0, "val_loss"] == 2.5 and pd.isna(frame.loc[1, "val_loss"])
    assert pd.isna(frame.loc[0, "gene.lora_rank"]) and frame.loc[1, "gene.lora_rank"] == 8


def test_readers_and_writer_do_not_lock_each_other_in_a_sqlite_file(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    store = Storage(url)
    store.create_run("r", SPACE, seed=0)

    # Another process writing (an exclusive transaction, still open) blocks no reader.
    writer = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    writer.execute("BEGIN EXCLUSIVE")
    writer.execute("UPDATE evo_runs SET status = 'failed'")
    with Storage(url) as reader:
        run = reader.get_run("r")
        assert run is not None and run.status == "running"  # the last committed state
    writer.execute("ROLLBACK")

    # A reader in the middle of a transaction blocks no write.
    reader_conn = sqlite3.connect(db_path, timeout=0, isolation_level=None)
    reader_conn.execute("BEGIN")
    assert reader_conn.execute("SELECT status FROM evo_runs").fetchone() == ("running",)
    store.set_run_status("r", "finished")
    assert reader_conn.execute("SELECT status FROM evo_runs").fetchone() == ("running",)
    reader_conn.execute("COMMIT")
    assert reader_conn.execute("SELECT status FROM evo_runs").fetchone() == ("finished",)
    reader_conn.close()
    writer.close()
    store.close()


def test_an_open_write_blocks_no_reader_and_an_open_read_no_write(database_url: str) -> None:
    with Storage(database_url) as store:
        store.create_run("r", SPACE, seed=0)
        other = create_engine(database_url)
        with other.connect() as writer:  # another process's write, not committed yet
            writer.execute(text("UPDATE evo_runs SET status = 'failed'"))
            with Storage(database_url, create=False, read_only=True) as reader:
                assert reader.require_run("r").status == "running"  # the last committed
            writer.rollback()
        with other.connect() as reader:  # a reader in the middle of a transaction
            assert reader.scalar(text("SELECT status FROM evo_runs")) == "running"
            write = threading.Thread(target=store.set_run_status, args=("r", "finished"))
            write.start()
            write.join(timeout=20)
            assert not write.is_alive(), "the write waited for the reader"
            reader.commit()
            assert reader.scalar(text("SELECT status FROM evo_runs")) == "finished"
        other.dispose()


def test_newer_schema_is_refused(database_url: str) -> None:
    Storage(database_url).close()
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE evo_schema SET version = :v"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(UserError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        Storage(database_url)


def test_unusable_databases_are_user_errors(tmp_path: Path) -> None:
    junk = tmp_path / "notes.db"
    junk.write_text("these are my notes, not a database\n" * 100)
    with pytest.raises(UserError, match=r"notes\.db.*not a database"):
        Storage(f"sqlite:///{junk}")
    with pytest.raises(UserError, match="nonsense://somewhere"):
        Storage("nonsense://somewhere")
    with pytest.raises(UserError, match="not a url"):
        Storage("not a url")


def test_validations_are_kept_per_genome_budget_and_seed(store: Storage) -> None:
    store.create_run("r", SPACE, seed=0)
    genome = store.genome_id("r", {"n": 0})
    first = store.start_validation("r", genome, {"max_tokens": 2e6}, seed=7)
    other = store.start_validation("r", genome, {"max_tokens": 2_000_000}, seed=8)
    store.finish_validation(
        first, outcome(TrialStatus.DONE, {"bits_per_byte": 1.25, "curve": [], "error": None})
    )
    assert store.interrupt_validations("r") == 1  # `other` was left running
    records = {v.id: v for v in store.validations("r")}
    assert records[first].status is TrialStatus.DONE and records[first].metric("bits_per_byte")
    assert records[first].metrics == {"bits_per_byte": 1.25}  # only metrics are kept
    assert records[other].status is TrialStatus.INTERRUPTED
    # Running it again reuses its row: one row per genome, budget and seed.
    assert store.start_validation("r", genome, {"max_tokens": 2_000_000.0}, seed=8) == other
    assert [v.budget for v in store.validations("r")] == [{"max_tokens": 2_000_000}] * 2
    with pytest.raises(ValueError, match="status must be one of"):
        store.finish_validation(other, outcome(TrialStatus.RUNNING, {}))


def test_a_reader_polls_while_the_driver_writes(database_url: str) -> None:
    """`evo status` and the dashboard read in their own connections while the driver
    writes: every poll succeeds and sees the committed state, which only grows."""
    writes, polls, errors = 120, [], []
    space = yaml.safe_dump(steady_space_dict(Path("corpus")))
    with Storage(database_url) as writer:
        writer.create_run("r", space, seed=1)
        done = threading.Event()

        def poll() -> None:
            with Storage(database_url, create=False, read_only=True) as reader:
                while not done.is_set():
                    try:
                        print_status(reader, "r", Console(file=io.StringIO()))
                        polls.append(sum(t.status.is_result for t in reader.trials("r")))
                    except Exception as err:
                        errors.append(repr(err))

        thread = threading.Thread(target=poll)
        thread.start()
        try:
            for n in range(writes):
                trial = writer.add_trial("r", writer.genome_id("r", {"n": n}))
                writer.mark_running(trial, host="h", device="cpu")
                writer.finish_trial(trial, outcome("done", full_result()))
        finally:
            done.set()
            thread.join()
    assert errors == []
    assert len(polls) >= 5 and polls == sorted(polls)
    assert polls[-1] <= writes and any(0 < n < writes for n in polls)  # read mid-way


def test_a_postgres_password_can_stay_off_the_command_line(
    postgres: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libpq reads PGPASSWORD (or ~/.pgpass) when the URL has no password, so `--storage`
    need not show one; a URL that has one is shown with it hidden."""
    from postgres_server import fresh_database

    with fresh_database(postgres, "evo_test_password") as url:
        given = make_url(url)
        password = given.password
        bare = f"{given.drivername}://{given.username}@{given.host}:{given.port}/{given.database}"
        monkeypatch.setenv("PGPASSFILE", os.devnull)
        monkeypatch.delenv("PGPASSWORD", raising=False)
        with pytest.raises(UserError, match="cannot open the results database") as refused:
            Storage(bare)
        assert password not in str(refused.value)
        monkeypatch.setenv("PGPASSWORD", password)
        with Storage(bare) as storage:
            storage.create_run("r", SPACE, seed=0)
        with Storage(url) as storage:
            assert password not in storage.url and "***" in storage.url
            assert [run.name for run in storage.list_runs()] == ["r"]


def test_a_missing_postgres_database_is_a_user_error(postgres: Any) -> None:
    url = postgres.set(database="no_such_evo_db")
    with pytest.raises(UserError, match='database "no_such_evo_db" does not exist') as refused:
        Storage(url.render_as_string(hide_password=False))
    assert postgres.password not in str(refused.value)


@pytest.fixture(scope="module")
def tiny_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, ...]]]:
    """The tiny steady-state search's folder, and what it does run without interruption
    (in this process, on SQLite)."""
    folder = tmp_path_factory.mktemp("tiny")
    url = run_steady_search(folder, "straight.db")
    with Storage(url, create=False) as storage:
        return folder, search_history(storage, "space")


def test_a_driver_killed_with_9_resumes_to_the_same_search(
    database_url: str, tiny_search: tuple[Path, list[tuple[Any, ...]]], workdir: Path
) -> None:
    folder, straight = tiny_search
    space_file = str(folder / "space.yaml")
    command = [sys.executable, "-m", "evo.cli", "run", space_file, "--local", "--quiet"]
    driver = subprocess.Popen([*command, "--storage", database_url], stderr=subprocess.DEVNULL)
    with Storage(database_url) as storage:
        deadline = time.time() + 120
        while driver.poll() is None and time.time() < deadline:
            if storage.get_run("space") and len(search_history(storage, "space")) >= 6:
                break
            time.sleep(0.05)
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        assert storage.require_run("space").status == "running"  # as a dead driver leaves it
        assert evo(["resume", "space", "--local", "--quiet", "--storage", database_url]) == 0
        assert search_history(storage, "space") == straight
        trials = storage.trials("space")
        results = Counter((t.genome_id, t.rung) for t in trials if t.status.is_result)
        assert not any(t.status.is_active for t in trials) and max(results.values()) == 1
        space = load_space(folder / "space.yaml")
        assert replayed_decisions(space, 64, storage, "space") == len(straight)
    assert not (workdir / "results" / "space" / "trials").exists()  # no checkpoint left


def test_a_database_caught_while_another_evo_creates_it_is_left_alone(database_url: str) -> None:
    # SQLite commits CREATE TABLE at once: a reader can find the tables of a database
    # being created before its schema row. It must not try to create them too.
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE evo_schema (id INTEGER PRIMARY KEY, version INTEGER)")
        )
    with pytest.raises(UserError, match="another evo is creating it"):
        Storage(database_url, create=False)
    assert _scalars(database_url, "SELECT COUNT(*) FROM evo_schema") == [0]
    assert "evo_runs" not in _columns(database_url)
    engine.dispose()
