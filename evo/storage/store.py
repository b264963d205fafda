"""The results database of a search: runs, genomes, trials, curves, generations,
sessions and promotions.

The driver is the only writer; `evo status` and `evo report` read it from other
processes while a search runs. Every public method is one short transaction, so a
crash at any moment leaves a consistent database, and every method returns plain
dataclasses and dicts, never ORM objects tied to a session.

SQLite (the default) runs in WAL mode so that readers and the writer never lock each
other out. Any other SQLAlchemy URL (PostgreSQL for a shared cluster) gets the same
schema: it uses only portable column types. A database written by an older evo is
upgraded when a writer opens it (Alembic migrations in `migrations/`; a SQLite file is
copied aside first), never by a reader (`read_only`); one written by a newer evo is
refused.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import importlib.metadata
import json
import logging
import math
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from sqlalchemy import (
    Connection,
    Select,
    Text,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from evo.metrics import METRICS, RESULT_STATUSES, TrialStatus, metric_value
from evo.storage import leases
from evo.storage.leases import DriverRecord, Lease, database_seconds
from evo.storage.models import (
    SCHEMA_VERSION,
    Base,
    CurvePointRow,
    ForecastRow,
    GenerationRow,
    GenomeRow,
    MemberRow,
    PredictionRow,
    PromotionRow,
    RunRow,
    RunStatus,
    SchemaRow,
    SessionRow,
    TrialRow,
    ValidationRow,
    as_utc,
)
from llm.errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    # The executor brings torch, which a reader of the database does without.
    from evo.executor import TrialOutcome
    from llm.trial import CurvePoint

log = logging.getLogger(__name__)

DEFAULT_URL = "sqlite:///results/evo.db"
MIGRATIONS = Path(__file__).parent / "migrations"
HEAD_REVISION = f"{SCHEMA_VERSION:04d}"  # the migration that makes a database of this schema
BASELINE_REVISION = "0001"  # what a schema-1 database (no alembic_version table) has

RESULTS = tuple(sorted(status.value for status in RESULT_STATUSES))
# Columns of trials_frame around the genes and metrics.
_FRAME_HEAD = ("trial_id", "generation", "rung", "decision", "attempt", "status", "genome_id")
_FRAME_TIMES = ("started_at", "finished_at")
_FRAME_TAIL = (
    "error",
    "host",
    "device",
    "worker",
    "started_at",
    "finished_at",
    "recorded",
    "lent_seconds",
)


@dataclass(frozen=True)
class RunInfo:
    name: str
    space_yaml: str
    space_sha256: str
    seed: int
    status: str
    version: str  # of the evo-llm package that created the run
    generation: int | None  # the last generation saved; None before the first
    created_at: datetime
    updated_at: datetime
    # What a trial that learned nothing beyond token frequencies scores (see
    # evo.summary.stalled); None for a run no search has prepared data for since schema 4.
    unigram_bits_per_byte: float | None
    # Tokens in the training split of its pretraining corpus; None for a run no search
    # has prepared data for since schema 7.
    train_tokens: int | None = None
    # The URL of its checkpoint store (`evo run --checkpoints`); None for a run no driver
    # has held since schema 9.
    checkpoints: str | None = None
    driver: DriverRecord | None = None  # who drives it (`evo.storage.leases`), since schema 8

    @property
    def lost_since(self) -> datetime | None:
        """When the driver of a run still marked running was last alive, once its lease
        is gone (it was killed, or lost its host); None while it is alive or the run is
        not running, and for a run no driver has held (a search run through the API)."""
        if self.status != RunStatus.RUNNING.value or self.driver is None or self.driver.alive:
            return None
        return self.driver.heartbeat_at

    @property
    def shown_status(self) -> str:
        """The status as the read commands show it: a running run is `running` only while
        its driver's heartbeat is fresh."""
        lost = self.lost_since
        if lost is None:
            return self.status
        return f"lost since {lost:%Y-%m-%d %H:%M:%S} UTC, resume with evo resume {self.name}"


@dataclass(frozen=True)
class TrialRecord:
    id: int
    genome_id: int
    generation: int | None
    rung: int
    decision: int | None
    seen: int | None
    recorded: int | None
    budget: dict[str, Any] | None
    seed: int | None
    continued_from: int | None
    checkpoint: str | None
    attempt: int
    status: TrialStatus
    host: str | None
    device: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    metrics: dict[str, float]  # what it measured, by name of METRICS (an integer's as int)
    pretrain: dict[str, Any] | None
    error: str | None

    def metric(self, name: str) -> float | None:
        return metric_value(self.metrics, name)


class TrialSummary(NamedTuple):
    """A trial as the summaries of a run read it (`evo.summary`): where it stands and what
    it measured, without its genes, budget or error. A NamedTuple: `evo status` reads one
    per trial, 10,000 in a large run, and must print within a second."""

    trial_id: int
    genome_id: int
    rung: int
    decision: int | None
    status: str  # a TrialStatus value
    metrics: dict[str, float]  # what it measured, by name of METRICS
    started_at: datetime | None
    finished_at: datetime | None
    recorded: int | None  # the order results were recorded in
    lent_seconds: float | None

    def metric(self, name: str) -> float | None:
        return metric_value(self.metrics, name)


@dataclass(frozen=True)
class SessionRecord:
    id: int
    workers: int
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class Spent:
    """What a run's trials have used so far: training steps and tokens, worker-seconds
    (each trial's wall time on the one worker it holds, attempts lost to a dead worker or
    an interruption included) and trials (decisions: a retry is the same trial). The
    steps and tokens of a lost attempt are not known, and not counted."""

    steps: int
    tokens: int
    worker_seconds: float
    trials: int

    def of(self, limit: str) -> float:
        return float(getattr(self, limit))


@dataclass(frozen=True)
class GenerationRecord:
    generation: int
    genome_ids: list[int]  # the population, in order
    rng_state: Any  # as saved, with JSON lists turned back into tuples
    stats: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class PromotionRecord:
    id: int
    genome_id: int
    out_dir: str
    status: str
    metrics: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ValidationRecord:
    """One retraining of a genome by `evo validate`, at a budget with a seed."""

    id: int
    genome_id: int
    budget: dict[str, Any]
    seed: int
    status: TrialStatus
    metrics: dict[str, Any] | None
    host: str | None
    worker: str | None
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None

    def metric(self, name: str) -> float | None:
        return metric_value(self.metrics, name)


@dataclass(frozen=True)
class PredictionRecord:
    """A genome's predicted score at its run's target (`evo.schedule.forecast`)."""

    mean: float  # in the metric's unit, as low and high
    low: float  # the interval at the forecast's level
    high: float
    sd: float  # the law's uncertainty without the seed noise, on the law's scale
    measured: bool  # the genome was scored at the target: `mean` is that score


@dataclass(frozen=True)
class ForecastRecord:
    """A run's forecast of its target: the law fitted to its rung scores of one metric,
    and each genome's prediction."""

    metric: str
    budget: dict[str, float]  # the target, as TrainConfig keys
    level: float  # the intervals' coverage
    alpha: float  # the law's shared exponent
    law_error: float  # κ: the share of a predicted drop the law may get wrong
    noise: float  # one score's seed noise, on the law's scale
    noise_source: str  # "residuals" (estimated from the run) or "assumed"
    check: dict[str, Any] | None  # the law tried on the run (`extrapolate.Check`'s fields)
    predictions: dict[int, PredictionRecord]  # by genome
    recorded: int | None = None  # fitted after this result (as stored; None before)


_Record = TypeVar("_Record")


def _record(cls: type[_Record], row: Base) -> _Record:
    """The dataclass `cls` filled from the same-named attributes of an ORM row."""
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})


def _run_info(row: RunRow, now: float | None) -> RunInfo:
    """The run as of `now`, by the database's clock (None: one just created)."""
    names = [f.name for f in dataclasses.fields(RunInfo) if f.name != "driver"]
    values = {name: getattr(row, name) for name in names}
    return RunInfo(**values, driver=None if now is None else leases.driver_of(row, now))


def _trial_record(row: TrialRow) -> TrialRecord:
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(TrialRecord)}
    values["status"] = TrialStatus(row.status)
    values["metrics"] = row.metrics or {}
    return TrialRecord(**values)


@contextmanager
def _collection_paused() -> Iterator[None]:
    """No garbage collection inside: making 10,000 rows' objects, none of them garbage,
    would set off collections that each walk every object of the process (a fifth of
    `trial_summaries`' time)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _json_text(column: Any) -> Any:
    """A JSON column read as its text: PostgreSQL's driver would parse each row's apart,
    and `_json_column` parses a whole column in one call (10,000 rows for `evo status`)."""
    return cast(column, Text)


def _json_column(values: Sequence[Any]) -> list[dict[str, Any]]:
    """A column of JSON objects as dicts ({} for NULL), the text ones parsed in one call
    (PostgreSQL's driver gives them parsed already)."""
    texts = [value for value in values if isinstance(value, str)]
    parsed = iter(json.loads("[" + ",".join(texts) + "]") if texts else [])
    return [(next(parsed) if isinstance(v, str) else v) or {} for v in values]


def _utc(value: str | datetime | None) -> datetime | None:
    """A timestamp read raw, as UTCDateTime reads it but faster (10,000 of them for `evo
    status`): SQLite gives its text, without the zone; PostgreSQL a datetime in its
    session's zone."""
    if value is None:
        return None
    return as_utc(datetime.fromisoformat(value) if isinstance(value, str) else value)


def _measured(values: dict[str, Any]) -> dict[str, Any]:
    """The metrics among `values` that have a value, as JSON data (a non-finite float has
    none: JSON has no NaN or infinity)."""
    metrics = _jsonable({name: values.get(name) for name in METRICS})
    return {name: value for name, value in metrics.items() if value is not None}


def _with_wall_seconds(row: TrialRow, seconds: float | None) -> dict[str, Any] | None:
    """The trial's metrics with its wall_seconds (by the driver's clock) set."""
    return _measured({**(row.metrics or {}), "wall_seconds": seconds}) or None


def budget_key(budget: dict[str, Any]) -> str:
    """A budget as canonical text: `{"max_tokens": 2e6}` and `{"max_tokens": 2000000}` agree."""
    whole = {k: int(v) if float(v).is_integer() else float(v) for k, v in budget.items()}
    return json.dumps(whole, sort_keys=True)


def _finished_status(outcome: TrialOutcome, what: str) -> TrialStatus:
    """The outcome's status, once it is known to be a result with metrics evo knows."""
    status = TrialStatus(outcome.status)
    if not status.is_result:
        raise ValueError(f"a finished {what}'s status must be one of {RESULTS}")
    unknown = set(outcome.result.metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"{what} result has metrics evo.metrics lacks: {sorted(unknown)}")
    return status


def _mark_finished(
    row: TrialRow | ValidationRow, status: TrialStatus, outcome: TrialOutcome
) -> None:
    """Set a finished training's status, and where and when it ran: the worker's own
    host and epoch times (not the driver's dispatch time). What the outcome does not
    report (an empty host, a time of None) stays as the driver recorded it; the end is
    then now."""
    row.status = status.value
    row.finished_at = _now() if outcome.finished is None else _from_epoch(outcome.finished)
    if outcome.started is not None:
        row.started_at = _from_epoch(outcome.started)
    row.host = outcome.host or row.host
    row.worker = outcome.worker or row.worker


def _replace_forecast(
    session: Session, run_id: int, recorded: int, forecast: ForecastRecord
) -> None:
    """Make `forecast` the run's, fitted after result `recorded` (inside the caller's
    transaction)."""
    fit = {
        f.name: _jsonable(getattr(forecast, f.name))
        for f in dataclasses.fields(ForecastRecord)
        if f.name != "predictions"
    }
    row = session.get(ForecastRow, run_id) or ForecastRow(run_id=run_id)
    for name, value in {**fit, "recorded": recorded}.items():
        setattr(row, name, value)
    session.add(row)
    session.execute(delete(PredictionRow).where(PredictionRow.run_id == run_id))
    if forecast.predictions:
        session.execute(
            insert(PredictionRow),
            [
                {"genome_id": genome, "run_id": run_id, **dataclasses.asdict(prediction)}
                for genome, prediction in forecast.predictions.items()
            ],
        )


def _curve_rows(trial_id: int, points: Sequence[CurvePoint]) -> list[CurvePointRow]:
    return [
        CurvePointRow(
            trial_id=trial_id, **{key: _scalar(v) for key, v in dataclasses.asdict(point).items()}
        )
        for point in points
    ]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _no_run(name: str, url: str) -> str:
    return f"no run named {name!r} in {url} (see `evo ls`)"


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    """How long a trial ran by the driver's clock; None if it never started."""
    if start is None or end is None:
        return None
    start, end = (m.replace(tzinfo=m.tzinfo or timezone.utc) for m in (start, end))
    return max((end - start).total_seconds(), 0.0)


def _from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def _jsonable(value: Any) -> Any:
    """`value` as strict JSON data, which every database accepts.

    Tuples become lists, numpy scalars and arrays Python numbers and lists, and
    non-finite floats None (JSON has no NaN; PostgreSQL rejects it).
    """
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _tuples(value: Any) -> Any:
    """Undo JSON's tuple-to-list conversion, so `random.setstate` accepts the state."""
    if isinstance(value, dict):
        return {key: _tuples(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _scalar(value: Any) -> Any:
    """A numpy or torch scalar as the Python number a database driver can bind."""
    return value.item() if hasattr(value, "item") else value


def genome_hash(genes: dict[str, Any]) -> str:
    """The sha256 of canonical JSON: sorted keys, floats written by repr (shortest exact)."""
    text = json.dumps(_jsonable(genes), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _package_version() -> str:
    try:
        return importlib.metadata.version("evo-llm")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching a fresh file to WAL may have to wait for a lock. In WAL
    # mode, synchronous=NORMAL keeps the database consistent through any crash; a power
    # cut can only lose the last commits, which a resumed search redoes.
    pragmas = ("busy_timeout=30000", "journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON")
    for pragma in pragmas:
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names; None for in-memory SQLite and for server databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _make_engine(url: str, create: bool, read_only: bool = False) -> Engine:
    parsed = make_url(url)
    file = _sqlite_file(parsed)
    if file is not None and not file.exists():
        if not create:
            raise UserError(f"no evo database at {file} (from --storage); `evo run` creates one")
        file.parent.mkdir(parents=True, exist_ok=True)
    if file is not None and not create and file.stat().st_size == 0:
        # Opening it would write (WAL mode alone writes a header): refuse it untouched.
        raise UserError(f"{file} is empty, not an evo database; `evo run` creates one")
    backend = parsed.get_backend_name()
    if file is not None and read_only:
        engine = create_engine(parsed, creator=lambda: _read_only_connection(file))
    else:
        # A PostgreSQL cluster made without a locale has the SQL_ASCII encoding, in which
        # psycopg hands text back as bytes; evo writes only UTF-8, so read it as that.
        utf8 = {"client_encoding": "utf8"} if backend == "postgresql" else {}
        engine = create_engine(parsed, connect_args=utf8)
    reader = {"sqlite": _sqlite_reader, "postgresql": _postgresql_reader}
    if read_only and backend in reader:
        event.listen(engine, "connect", reader[backend])
    elif backend == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _read_only_connection(file: Path) -> sqlite3.Connection:
    """A connection to the SQLite `file` that the operating system lets write nothing
    (mode=ro), even where this user may write the file. A database in WAL mode is read
    through its -shm index, which a reader creates when the writer has left none; where
    the folder takes no new file, the database is read as immutable: as it is on disk
    (no writer has it open: a writer keeps those files beside it)."""
    uri = file.resolve().as_uri()
    # A timeout: a writer may hold the database for a moment.
    options = {"uri": True, "check_same_thread": False, "timeout": 30.0}
    connection = sqlite3.connect(f"{uri}?mode=ro", **options)
    try:
        connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError as exc:
        connection.close()
        if exc.sqlite_errorname != "SQLITE_CANTOPEN":  # locked, damaged: not the folder
            raise
        return sqlite3.connect(f"{uri}?immutable=1", **options)
    return connection


def _sqlite_reader(dbapi_connection: Any, connection_record: Any) -> None:
    """A connection that cannot write: query_only makes SQLite refuse any change, and the
    journal mode is left as the writer set it (switching it would be a write)."""
    cursor = dbapi_connection.cursor()
    for pragma in ("busy_timeout=30000", "query_only=ON"):
        cursor.execute(f"PRAGMA {pragma}")
    cursor.close()


def _postgresql_reader(dbapi_connection: Any, connection_record: Any) -> None:
    """A session whose every transaction is read-only: PostgreSQL refuses any change or
    DDL on it. Committed, since a SET inside a transaction ends with it."""
    cursor = dbapi_connection.cursor()
    cursor.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
    cursor.close()
    dbapi_connection.commit()


_EMPTY_SCHEMA = (
    "{url} has an empty evo_schema table: another evo is creating it (try again), or it is damaged"
)


def _check_schema(engine: Engine, shown_url: str) -> None:
    """Refuse, without changing it, a database this evo cannot read as it is."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(SchemaRow.__tablename__):
            raise UserError(f"{shown_url} is not an evo database (it has no evo_schema table)")
        found = connection.scalar(select(SchemaRow.version))
    if found is None:
        raise UserError(_EMPTY_SCHEMA.format(url=shown_url))
    if found != SCHEMA_VERSION:
        raise UserError(
            f"{shown_url} has schema {found}, this evo writes {SCHEMA_VERSION}: "
            + (
                "the next `evo run`, `evo resume` or `evo promote` upgrades it"
                if found < SCHEMA_VERSION
                else "upgrade evo-llm to read it"
            )
        )


def _prepare_schema(engine: Engine, shown_url: str, create: bool) -> None:
    """Create the tables of a new database (when `create`), or upgrade an older one;
    refuse a newer one, and one that is not evo's."""
    with engine.connect() as connection:
        exists = inspect(connection).has_table(SchemaRow.__tablename__)
        if not exists and not create:
            raise UserError(f"{shown_url} is not an evo database (it has no evo_schema table)")
        found = connection.scalar(select(SchemaRow.version)) if exists else None
    if exists and found is None:
        # SQLite commits each CREATE TABLE at once (Python's sqlite3 opens a transaction
        # before a change of rows only): a database that another evo is creating has its
        # tables a moment before its schema row. Creating them again would fail.
        raise UserError(_EMPTY_SCHEMA.format(url=shown_url))
    if found is not None and found > SCHEMA_VERSION:
        raise UserError(
            f"{shown_url} has schema version {found}, newer than this evo understands "
            f"({SCHEMA_VERSION}); upgrade evo-llm to read it"
        )
    if found is None:
        with engine.begin() as connection:
            Base.metadata.create_all(connection)
            connection.execute(insert(SchemaRow).values(id=1, version=SCHEMA_VERSION))
            _alembic(connection, "stamp", HEAD_REVISION)
    elif found < SCHEMA_VERSION:
        _upgrade(engine, shown_url, found)


def _alembic(connection: Connection, verb: str, revision: str) -> None:
    # Imported here: only a new or an old database needs Alembic, not every reader.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    getattr(command, verb)(config, revision)


def _upgrade(engine: Engine, shown_url: str, version: int) -> None:
    """Migrate a database of schema `version` to this evo's, keeping a copy of a SQLite
    file as it was. SQLite checks no foreign keys meanwhile: Alembic alters a SQLite
    table by copying it, and dropping the old copy must not cascade to its children."""
    file = _sqlite_file(engine.url)
    if file is not None:
        backup = file.with_name(f"{file.name}.schema-{version}.bak")
        with sqlite3.connect(file) as source, sqlite3.connect(backup) as copy:
            source.backup(copy)
    with engine.connect() as connection:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        if not inspect(connection).has_table("alembic_version"):
            _alembic(connection, "stamp", BASELINE_REVISION)
        _alembic(connection, "upgrade", HEAD_REVISION)
        connection.commit()
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
    where = f"; the old file is kept as {backup}" if file is not None else ""
    log.warning(
        "evo: upgraded %s from schema version %d to %d%s", shown_url, version, SCHEMA_VERSION, where
    )


def _reason(exc: BaseException) -> str:
    """The first line of the underlying driver's message, without SQLAlchemy's footer."""
    if isinstance(exc, DBAPIError):
        exc = exc.orig
    return str(exc).partition("\n")[0] or type(exc).__name__


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


class Storage:
    """All reads and writes of the search's results, one short transaction per call."""

    def __init__(
        self, url: str = DEFAULT_URL, *, create: bool = True, read_only: bool = False
    ) -> None:
        """Open the database at `url`, adding any missing tables.

        A SQLite file that does not exist yet is created only when `create` is true;
        otherwise it is a UserError, so that a mistyped path cannot pass for an empty
        database. Server databases (PostgreSQL) must exist already either way.
        `read_only` never creates, upgrades or writes anything (SQLite opens the file
        read-only and refuses writes on its connections; PostgreSQL's transactions are
        read-only): for the read commands, such as `evo dashboard` beside a running
        search. A database that needs an upgrade is then a UserError saying so.
        """
        self.url = _shown(url)
        try:
            self._engine = _make_engine(url, create and not read_only, read_only)
            # An in-memory database is always new: it gets its tables either way.
            in_memory = (
                self._engine.dialect.name == "sqlite" and _sqlite_file(self._engine.url) is None
            )
            if read_only:
                _check_schema(self._engine, self.url)
            else:
                _prepare_schema(self._engine, self.url, create or in_memory)
        except (SQLAlchemyError, ImportError, OSError) as exc:
            raise UserError(f"cannot open the results database {self.url}: {_reason(exc)}") from exc
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._lease: Lease | None = None  # held by this process: its writes are fenced

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._engine.dispose()

    @contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write's transaction; while this process holds a lease, it first renews it,
        and writes nothing if another driver has taken the run (`leases.LeaseLost`)."""
        with self._sessions.begin() as session:
            if self._lease is not None:
                leases.renew(session, self._lease)
            yield session

    # Driver leases (evo.storage.leases)

    def take_lease(
        self, run: str, host: str, pid: int, seconds: float, *, replacing: int | None = None
    ) -> bool:
        """Take the run's lease for `seconds` (renewed by every write and `renew_lease`), if
        no live driver holds it, or the one that does holds lease number `replacing` (known
        to be dead); from then on this Storage's writes are fenced. False if not taken."""
        with self._sessions.begin() as session:
            run_id = self._run(session, run).id
            number = leases.take(session, run_id, host, pid, seconds, replacing)
        if number is None:
            return False
        self._lease = Lease(run_id, run, number, seconds)
        return True

    def renew_lease(self) -> None:
        """The heartbeat: renew this process's lease (`LeaseLost` if it was taken over)."""
        with self._writing():
            pass

    def release_lease(self) -> None:
        """Give up this process's lease, if another driver has not taken it meanwhile."""
        lease, self._lease = self._lease, None
        if lease is not None:
            with self._sessions.begin() as session:
                leases.release(session, lease)

    # Runs

    def create_run(self, name: str, space_yaml: str, seed: int) -> RunInfo:
        if not name.strip():
            raise UserError("a run needs a non-empty name")
        now = _now()
        with self._writing() as session:
            if session.scalar(select(RunRow.id).where(RunRow.name == name)) is not None:
                raise UserError(
                    f"a run named {name!r} already exists in {self.url}; "
                    "choose another name or resume that run"
                )
            row = RunRow(
                name=name,
                space_yaml=space_yaml,
                space_sha256=hashlib.sha256(space_yaml.encode()).hexdigest(),
                seed=seed,
                status=RunStatus.RUNNING.value,
                version=_package_version(),
                generation=None,
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            return _run_info(row, None)

    def get_run(self, name: str) -> RunInfo | None:
        with self._sessions.begin() as session:
            found = session.execute(
                select(RunRow, database_seconds()).where(RunRow.name == name)
            ).one_or_none()
            return None if found is None else _run_info(*found)

    def require_run(self, name: str) -> RunInfo:
        """The run named `name`; a UserError pointing at `evo ls` when there is none."""
        run = self.get_run(name)
        if run is None:
            raise UserError(_no_run(name, self.url))
        return run

    def list_runs(self) -> list[RunInfo]:
        with self._sessions.begin() as session:
            rows = session.execute(
                select(RunRow, database_seconds()).order_by(RunRow.created_at, RunRow.id)
            )
            return [_run_info(row, now) for row, now in rows]

    def set_run_status(self, name: str, status: RunStatus) -> None:
        status = RunStatus(status)
        with self._writing() as session:
            row = self._run(session, name)
            row.status = status.value
            row.updated_at = _now()

    def set_unigram_baseline(self, name: str, bits_per_byte: float) -> None:
        """Record the bits per byte of the best unigram model of the run's validation text."""
        with self._writing() as session:
            self._run(session, name).unigram_bits_per_byte = bits_per_byte

    def set_train_tokens(self, name: str, tokens: int) -> None:
        """Record the tokens of the training split of the run's pretraining corpus."""
        with self._writing() as session:
            self._run(session, name).train_tokens = tokens

    def set_checkpoints(self, name: str, url: str) -> None:
        """Record where the run's checkpoint store is (evo.checkpoints)."""
        with self._writing() as session:
            self._run(session, name).checkpoints = url

    # Genomes and trials

    def genome_id(self, run: str, genes: dict[str, Any]) -> int:
        """The id of these genes in `run`, adding them the first time they are seen."""
        genes = _jsonable(genes)
        digest = genome_hash(genes)
        with self._writing() as session:
            run_id = self._run(session, run).id
            found = session.scalar(
                select(GenomeRow.id).where(GenomeRow.run_id == run_id, GenomeRow.hash == digest)
            )
            if found is not None:
                return found
            row = GenomeRow(run_id=run_id, hash=digest, genes=genes)
            session.add(row)
            session.flush()
            return row.id

    def genomes(self, run: str, ids: Iterable[int] | None = None) -> dict[int, dict[str, Any]]:
        """The run's genomes' genes by id: all of them, or those of `ids` (a status shows
        ten of a run's 10,000)."""
        with self._sessions.begin() as session:
            run_id = self._run(session, run).id
            query = select(GenomeRow.id, GenomeRow.genes).where(GenomeRow.run_id == run_id)
            if ids is not None:
                query = query.where(GenomeRow.id.in_(list(ids)))
            rows = session.execute(query.order_by(GenomeRow.id))
            return {genome_id: genes for genome_id, genes in rows}

    def finished_result(self, run: str, genome_id: int, rung: int = 0) -> TrialRecord | None:
        """The latest result of the genome at the rung, which can stand in for a new one."""
        with self._sessions.begin() as session:
            row = session.scalar(
                self._trials_query(session, run)
                .where(
                    TrialRow.genome_id == genome_id,
                    TrialRow.rung == rung,
                    TrialRow.status.in_(RESULTS),
                )
                .order_by(TrialRow.id.desc())
                .limit(1)
            )
            return None if row is None else _trial_record(row)

    def add_trial(
        self,
        run: str,
        genome_id: int,
        *,
        generation: int | None = None,
        rung: int = 0,
        decision: int | None = None,
        seen: int | None = None,
        attempt: int = 0,
        budget: dict[str, Any] | None = None,
        seed: int | None = None,
        continued_from: int | None = None,
    ) -> int:
        """Queue a trial; its `decision` defaults to its own id (a decision of its own)."""
        with self._writing() as session:
            genome = session.get(GenomeRow, genome_id)
            if genome is None or genome.run_id != self._run(session, run).id:
                raise ValueError(f"genome {genome_id} is not part of run {run!r}")
            row = TrialRow(
                genome_id=genome_id,
                generation=generation,
                rung=rung,
                decision=decision,
                seen=seen,
                attempt=attempt,
                budget=_jsonable(budget),
                seed=seed,
                continued_from=continued_from,
                status=TrialStatus.QUEUED.value,
            )
            session.add(row)
            session.flush()
            if decision is None:
                row.decision = row.id
            return row.id

    def mark_running(
        self, trial_id: int, host: str, device: str, worker: str | None = None
    ) -> None:
        with self._writing() as session:
            row = self._trial(session, trial_id)
            row.status = TrialStatus.RUNNING.value
            row.host, row.device, row.worker = host, device, worker
            row.started_at = _now()

    def retry_trial(self, trial_id: int, error: str) -> int:
        """Mark a trial whose worker was lost as retried, with the reason, and queue the
        next attempt of its decision, both at once; returns the new trial's id."""
        with self._writing() as session:
            row = self._trial(session, trial_id)
            row.status = TrialStatus.RETRIED.value
            row.error = error
            row.finished_at = _now()
            row.metrics = _with_wall_seconds(row, _seconds_between(row.started_at, row.finished_at))
            retry = TrialRow(
                **{
                    key: getattr(row, key)
                    for key in (
                        "genome_id",
                        "generation",
                        "rung",
                        "decision",
                        "seen",
                        "budget",
                        "seed",
                        "continued_from",
                    )
                },
                attempt=row.attempt + 1,
                status=TrialStatus.QUEUED.value,
            )
            session.add(retry)
            session.flush()
            return retry.id

    def finish_trial(
        self,
        trial_id: int,
        outcome: TrialOutcome,
        *,
        checkpoint: str | None = None,
        forget: Sequence[int] = (),
        forecast: ForecastRecord | None = None,
    ) -> int:
        """Store a trial's outcome: its status, where and when it ran (the worker's clock,
        not the driver's dispatch time), the idle workers' time lent to it
        (`evo.executor.CoreLending`), and its result's metrics, error, pretrain metrics and
        curve; also where its stable checkpoint was kept, and, in the same transaction,
        that the checkpoints of the trials in `forget` are no longer kept (the search's
        decisions that came with this result), and the run's forecast refitted with it
        (replacing the one before). Returns the result's place in the order results were
        recorded.

        A result may be partial (a timeout knows only its error); a metric it lacks has no
        value. A curve stored earlier for the trial is replaced.
        """
        status = _finished_status(outcome, "trial")
        result = outcome.result
        with self._writing() as session:
            row = self._trial(session, trial_id)
            run_id = session.scalar(select(GenomeRow.run_id).where(GenomeRow.id == row.genome_id))
            run_row = session.get(RunRow, run_id)
            assert run_row is not None  # a trial's genome belongs to a run
            run_row.results += 1
            run_row.updated_at = _now()
            row.recorded = run_row.results
            _mark_finished(row, status, outcome)
            row.checkpoint = checkpoint
            row.lent_seconds = outcome.lent_seconds
            row.metrics = _measured(result.metrics)
            row.error = result.error
            row.pretrain = _jsonable(result.pretrain)
            row.device = result.device or row.device
            session.execute(delete(CurvePointRow).where(CurvePointRow.trial_id == trial_id))
            session.add_all(_curve_rows(trial_id, result.curve))
            if forget:
                session.execute(
                    update(TrialRow).where(TrialRow.id.in_(forget)).values(checkpoint=None)
                )
            if forecast is not None:
                _replace_forecast(session, run_row.id, row.recorded, forecast)
            return row.recorded

    def add_curve_points(self, trial_id: int, points: Sequence[CurvePoint]) -> bool:
        """Add points to the learning curve of a running trial, as its worker sends them
        while it trains; its outcome (`finish_trial`) replaces them with its whole curve.
        The run counts as updated (its views redraw). The points of a trial no longer
        running (a late message) are not stored: False."""
        with self._writing() as session:
            row = self._trial(session, trial_id)
            if row.status != TrialStatus.RUNNING.value:
                return False
            session.add_all(_curve_rows(trial_id, points))
            run_id = session.scalar(select(GenomeRow.run_id).where(GenomeRow.id == row.genome_id))
            session.execute(update(RunRow).where(RunRow.id == run_id).values(updated_at=_now()))
            return True

    def forecast(self, run: str) -> ForecastRecord | None:
        """The run's latest forecast of its target; None when it has none (a target at the
        top rung, or no result yet)."""
        with self._sessions.begin() as session:
            run_id = self._run(session, run).id
            row = session.get(ForecastRow, run_id)
            if row is None:
                return None
            table = PredictionRow.__table__.c
            predictions = {
                genome: PredictionRecord(mean, low, high, sd, measured)
                for genome, mean, low, high, sd, measured in session.execute(
                    select(
                        table.genome_id, table.mean, table.low, table.high, table.sd, table.measured
                    ).where(table.run_id == run_id)
                )
            }
            fields = {f.name for f in dataclasses.fields(ForecastRecord)} - {"predictions"}
            return ForecastRecord(
                **{name: getattr(row, name) for name in fields}, predictions=predictions
            )

    def interrupt_active(self, run: str, at: datetime | None = None) -> list[TrialRecord]:
        """Mark the trials a stopped driver left queued or running as interrupted (they
        stay in the history, with the time they ran) and return them: the decisions a
        resumed search runs again. `at` is when the driver stopped; None when that is not
        known (it was killed), and the run's last recorded moment stands in for it."""
        with self._writing() as session:
            trials = self._trials_query(session, run)
            rows = session.scalars(
                trials.where(
                    TrialRow.status.in_((TrialStatus.QUEUED.value, TrialStatus.RUNNING.value))
                ).order_by(TrialRow.id)
            ).all()
            if at is None:
                moments = trials.with_only_columns(
                    func.max(TrialRow.started_at), func.max(TrialRow.finished_at)
                )
                known = [m for m in session.execute(moments).one() if m is not None]
                at = max((m.replace(tzinfo=timezone.utc) for m in known), default=_now())
            for row in rows:
                row.status = TrialStatus.INTERRUPTED.value
                row.finished_at = row.finished_at or at
                seconds = _seconds_between(row.started_at, row.finished_at)
                row.metrics = _with_wall_seconds(row, seconds)
            return [_trial_record(row) for row in rows]

    def forget_checkpoint(self, trial_id: int) -> None:
        """Record that the trial's stable checkpoint is gone (deleted, or never kept)."""
        with self._writing() as session:
            self._trial(session, trial_id).checkpoint = None

    def trial_counts(self) -> dict[str, int]:
        """How many trial rows each run has (retries included), by run name, in one query:
        `evo ls` need not read every trial to count them."""
        with self._sessions.begin() as session:
            rows = session.execute(
                select(RunRow.name, func.count(TrialRow.id))
                .join(GenomeRow, GenomeRow.run_id == RunRow.id)
                .join(TrialRow, TrialRow.genome_id == GenomeRow.id)
                .group_by(RunRow.name)
            )
            return {name: count for name, count in rows}

    def trials(self, run: str) -> list[TrialRecord]:
        with self._sessions.begin() as session:
            rows = session.scalars(self._trials_query(session, run).order_by(TrialRow.id))
            return [_trial_record(row) for row in rows]

    def spent(self, run: str) -> Spent:
        """The compute a run's trials have used (retried attempts too: their work was done
        even if its result was lost), and how many decisions it has made."""
        with self._sessions.begin() as session:
            run_id = self._run(session, run).id
            metrics = TrialRow.metrics
            steps, tokens, seconds, decisions = session.execute(
                select(
                    func.sum(metrics["steps"].as_integer()),
                    func.sum(metrics["tokens"].as_integer()),
                    func.sum(metrics["wall_seconds"].as_float()),
                    func.count(func.distinct(TrialRow.decision)),
                )
                .join(GenomeRow)
                .where(GenomeRow.run_id == run_id)
            ).one()
            return Spent(int(steps or 0), int(tokens or 0), float(seconds or 0.0), decisions)

    def curve(self, trial_id: int) -> list[dict[str, Any]]:
        """The trial's learning curve, as dicts that `llm.trial.CurvePoint(**point)` accepts."""
        keys = ("step", "tokens", "seconds", "train_loss", "val_loss", "stage")
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(CurvePointRow)
                .where(CurvePointRow.trial_id == trial_id)
                .order_by(CurvePointRow.id)
            )
            return [{key: getattr(row, key) for key in keys} for row in rows]

    def trial_summaries(self, run: str) -> list[TrialSummary]:
        """Every trial of the run as its summaries read it, in trial order: a light read
        (no genes, no ORM objects; the metrics' JSON parsed in one call) for `evo status`."""
        table = TrialRow.__table__.c
        with self._sessions.begin() as session:
            run_id = self._run(session, run).id
            rows = session.execute(
                select(
                    table.id,
                    table.genome_id,
                    table.rung,
                    table.decision,
                    table.status,
                    _json_text(table.metrics),
                    type_coerce(table.started_at, Text),
                    type_coerce(table.finished_at, Text),
                    table.recorded,
                    table.lent_seconds,
                )
                .join(GenomeRow, GenomeRow.id == table.genome_id)
                .where(GenomeRow.run_id == run_id)
                .order_by(table.id)
            ).all()
        with _collection_paused():
            metrics = _json_column([row[5] for row in rows])
            return [
                TrialSummary(*row[:5], measured, _utc(row[6]), _utc(row[7]), *row[8:])
                for row, measured in zip(rows, metrics, strict=True)
            ]

    def trials_frame(self, run: str) -> pd.DataFrame:
        """One row per trial, in trial order.

        Columns: trial_id, generation, rung, decision, attempt, status, genome_id, then
        `gene.<name>` for every gene (NaN where a genome lacks it), every metric of
        METRICS (numeric), then `pretrain.<name>` for every pretraining metric, error,
        host, device, worker, started_at, finished_at, recorded and lent_seconds.
        """
        import pandas as pd  # here: the commands that need no frame load no pandas

        # Plain rows of the columns needed, not ORM objects, with JSON and timestamps left
        # raw to be parsed a column at a time: a run may have 10,000 trials, and `evo
        # status` reads them all (bench/read_speed.py).
        table = TrialRow.__table__.c
        plain = [*_FRAME_HEAD[1:], *(n for n in _FRAME_TAIL if n not in _FRAME_TIMES)]
        times = [type_coerce(table[n], Text).label(n) for n in _FRAME_TIMES]
        raw = [*times, *(_json_text(table[n]).label(n) for n in ("metrics", "pretrain"))]
        with self._sessions.begin() as session:
            run_id = self._run(session, run).id
            rows = session.execute(
                select(table.id, *(table[n] for n in plain), *raw, _json_text(GenomeRow.genes))
                .join(GenomeRow, GenomeRow.id == table.genome_id)
                .where(GenomeRow.run_id == run_id)
                .order_by(table.id)
            ).all()
        values = list(zip(*rows, strict=True)) or [()] * (len(plain) + len(raw) + 2)
        frame = pd.DataFrame(dict(zip(["trial_id", *plain], values, strict=False)))
        for name, column in zip(_FRAME_TIMES, values[len(plain) + 1 :], strict=False):
            frame[name] = pd.to_datetime(pd.Series(column, dtype=object), utc=True, format="mixed")
        metrics, pretrain, genes = (_json_column(c) for c in values[-3:])
        parts = [
            pd.DataFrame.from_records(genes, index=frame.index).add_prefix("gene."),
            pd.DataFrame.from_records(metrics, index=frame.index, columns=list(METRICS)),
            pd.DataFrame.from_records(pretrain, index=frame.index).add_prefix("pretrain."),
        ]
        frame = pd.concat([frame, *parts], axis=1)
        columns = [
            *_FRAME_HEAD,
            *sorted(c for c in frame.columns if c.startswith("gene.")),
            *METRICS,
            *sorted(c for c in frame.columns if c.startswith("pretrain.")),
            *_FRAME_TAIL,
        ]
        frame = frame[columns]
        frame[list(METRICS)] = frame[list(METRICS)].apply(pd.to_numeric)
        return frame

    # Sessions

    def start_session(self, run: str, workers: int) -> int:
        with self._writing() as session:
            row = SessionRow(run_id=self._run(session, run).id, workers=workers, started_at=_now())
            session.add(row)
            session.flush()
            return row.id

    def end_session(self, session_id: int) -> None:
        with self._writing() as session:
            row = session.get(SessionRow, session_id)
            if row is not None:
                row.ended_at = _now()

    def run_sessions(self, run: str) -> list[SessionRecord]:
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(SessionRow)
                .where(SessionRow.run_id == self._run(session, run).id)
                .order_by(SessionRow.id)
            )
            return [_record(SessionRecord, row) for row in rows]

    # Generations

    def save_generation(
        self,
        run: str,
        generation: int,
        genome_ids: list[int],
        rng_state: object,
        stats: dict[str, Any],
    ) -> None:
        """Record a generation's population, RNG state and statistics all at once.

        A record of the same generation (from a run that was interrupted and resumed) is
        replaced. The run's current generation becomes `generation`.
        """
        now = _now()
        with self._writing() as session:
            run_row = self._run(session, run)
            same = (MemberRow.run_id == run_row.id, MemberRow.generation == generation)
            session.execute(delete(MemberRow).where(*same))
            session.execute(
                delete(GenerationRow).where(
                    GenerationRow.run_id == run_row.id, GenerationRow.generation == generation
                )
            )
            session.add_all(
                MemberRow(
                    run_id=run_row.id, generation=generation, position=i, genome_id=int(genome)
                )
                for i, genome in enumerate(genome_ids)
            )
            session.add(
                GenerationRow(
                    run_id=run_row.id,
                    generation=generation,
                    rng_state=_jsonable(rng_state),
                    stats=_jsonable(stats),
                    created_at=now,
                )
            )
            run_row.generation = generation
            run_row.updated_at = now

    def last_generation(self, run: str) -> GenerationRecord | None:
        """The highest generation saved; its `rng_state` is ready for `random.setstate`."""
        records = self._generations(run, latest_only=True)
        return records[0] if records else None

    def generations(self, run: str) -> list[GenerationRecord]:
        return self._generations(run, latest_only=False)

    # Promotions

    def record_promotion(
        self, run: str, genome_id: int, out_dir: str, status: str, metrics: dict[str, Any] | None
    ) -> int:
        status = str(status)  # a RunStatus as its value
        now = _now()
        with self._writing() as session:
            row = PromotionRow(
                run_id=self._run(session, run).id,
                genome_id=genome_id,
                out_dir=out_dir,
                status=status,
                metrics=_jsonable(metrics),
                created_at=now,
                updated_at=now,
            )
            session.add(row)
            session.flush()
            return row.id

    def update_promotion(
        self, promotion_id: int, status: str, metrics: dict[str, Any] | None
    ) -> None:
        """Set the promotion's status, and its metrics unless `metrics` is None."""
        status = str(status)
        with self._writing() as session:
            row = session.get(PromotionRow, promotion_id)
            if row is None:
                raise ValueError(f"no promotion with id {promotion_id} in {self.url}")
            row.status = status
            if metrics is not None:
                row.metrics = _jsonable(metrics)
            row.updated_at = _now()

    def promotions(self, run: str) -> list[PromotionRecord]:
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(PromotionRow)
                .where(PromotionRow.run_id == self._run(session, run).id)
                .order_by(PromotionRow.id)
            )
            return [_record(PromotionRecord, row) for row in rows]

    # Validation trials

    def start_validation(self, run: str, genome_id: int, budget: dict[str, Any], seed: int) -> int:
        """Record that a validation of the genome at `budget` with `seed` is running (again,
        if an earlier attempt was interrupted); returns its id."""
        key = budget_key(budget)
        with self._writing() as session:
            run_id = self._run(session, run).id
            row = session.scalar(
                select(ValidationRow).where(
                    ValidationRow.genome_id == genome_id,
                    ValidationRow.budget_key == key,
                    ValidationRow.seed == seed,
                )
            )
            if row is None:
                row = ValidationRow(
                    run_id=run_id,
                    genome_id=genome_id,
                    budget=json.loads(key),
                    budget_key=key,
                    seed=seed,
                )
                session.add(row)
            row.status = TrialStatus.RUNNING.value
            row.metrics = row.error = row.finished_at = None
            row.started_at = _now()
            session.flush()
            return row.id

    def finish_validation(self, validation_id: int, outcome: TrialOutcome) -> None:
        """Store a validation's outcome: its status, its result's metrics and error (the
        curve is not kept), and where and when it ran, as finish_trial does."""
        status = _finished_status(outcome, "validation")
        with self._writing() as session:
            row = session.get(ValidationRow, validation_id)
            if row is None:
                raise ValueError(f"no validation with id {validation_id} in {self.url}")
            _mark_finished(row, status, outcome)
            row.metrics = _measured(outcome.result.metrics)
            row.error = outcome.result.error

    def interrupt_validations(self, run: str) -> int:
        """Mark validations a stopped `evo validate` left running as interrupted; returns
        how many. They are run again by the next `evo validate`."""
        with self._writing() as session:
            result = session.execute(
                update(ValidationRow)
                .where(
                    ValidationRow.run_id == self._run(session, run).id,
                    ValidationRow.status == TrialStatus.RUNNING.value,
                )
                .values(status=TrialStatus.INTERRUPTED.value, finished_at=_now())
            )
            return int(getattr(result, "rowcount", 0) or 0)

    def validations(self, run: str) -> list[ValidationRecord]:
        with self._sessions.begin() as session:
            rows = session.scalars(
                select(ValidationRow)
                .where(ValidationRow.run_id == self._run(session, run).id)
                .order_by(ValidationRow.id)
            )
            return [
                dataclasses.replace(_record(ValidationRecord, row), status=TrialStatus(row.status))
                for row in rows
            ]

    # Helpers, each used inside a caller's transaction

    def _run(self, session: Session, name: str) -> RunRow:
        row = session.scalar(select(RunRow).where(RunRow.name == name))
        if row is None:
            raise UserError(_no_run(name, self.url))
        return row

    def _trial(self, session: Session, trial_id: int) -> TrialRow:
        row = session.get(TrialRow, trial_id)
        if row is None:
            raise ValueError(f"no trial with id {trial_id} in {self.url}")
        return row

    def _trials_query(self, session: Session, run: str) -> Select[Any]:
        run_id = self._run(session, run).id
        return select(TrialRow).join(GenomeRow).where(GenomeRow.run_id == run_id)

    def _generations(self, run: str, latest_only: bool) -> list[GenerationRecord]:
        with self._sessions.begin() as session:
            run_row = self._run(session, run)
            query = select(GenerationRow).where(GenerationRow.run_id == run_row.id)
            if latest_only:
                query = query.order_by(GenerationRow.generation.desc()).limit(1)
            rows = session.scalars(query.order_by(GenerationRow.generation)).all()
            members: dict[int, list[int]] = {row.generation: [] for row in rows}
            for generation, genome_id in session.execute(
                select(MemberRow.generation, MemberRow.genome_id)
                .where(MemberRow.run_id == run_row.id, MemberRow.generation.in_(members))
                .order_by(MemberRow.generation, MemberRow.position)
            ):
                members[generation].append(genome_id)
            return [
                GenerationRecord(
                    generation=row.generation,
                    genome_ids=members[row.generation],
                    rng_state=_tuples(row.rng_state),
                    stats=row.stats,
                    created_at=row.created_at,
                )
                for row in rows
            ]
