"""The tables of the results database, as SQLAlchemy 2.0 ORM classes.

Only `store.py` (the Storage API) and the migrations use them; the rest of evo sees plain
records. Every column type is portable, so SQLite and PostgreSQL get the same schema.
A change here needs a migration in `migrations/versions/` and a new SCHEMA_VERSION (the
migration's revision is the version, four digits). A trial's metrics are one JSON
object of the metrics it measured, by name: a metric added to `evo.metrics.METRICS`
needs no change here.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from evo.metrics import TrialStatus

# The schema these classes describe; `evo_schema.version` of a database says which it has.
SCHEMA_VERSION = 9


class RunStatus(str, enum.Enum):
    """Where a run stands (and a promotion, which is a run of its own)."""

    RUNNING = "running"
    INTERRUPTED = "interrupted"
    FINISHED = "finished"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


RUN_STATUSES = tuple(status.value for status in RunStatus)
TRIAL_STATUSES = tuple(status.value for status in TrialStatus)


def as_utc(value: datetime) -> datetime:
    """A timestamp read back, in UTC: SQLite forgets the zone (the value was stored in
    UTC), PostgreSQL gives it in its session's time zone."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp in UTC, read back in UTC whatever the database (`as_utc`)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def status_check(table: str, values: tuple[str, ...]) -> CheckConstraint:
    allowed = ", ".join(f"'{value}'" for value in values)
    return CheckConstraint(f"status IN ({allowed})", name=f"{table}_status")


class Base(DeclarativeBase):
    pass


class SchemaRow(Base):
    __tablename__ = "evo_schema"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class RunRow(Base):
    __tablename__ = "evo_runs"
    __table_args__ = (status_check(__tablename__, RUN_STATUSES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    space_yaml: Mapped[str] = mapped_column(Text)
    space_sha256: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[str] = mapped_column(String(64))
    generation: Mapped[int | None] = mapped_column(Integer)
    results: Mapped[int] = mapped_column(Integer, default=0)  # trial results recorded so far
    # Bits per byte of the best unigram model of the validation text trials are scored on
    # (evo.data.unigram_bits_per_byte); NULL until a search of the run prepared its data.
    unigram_bits_per_byte: Mapped[float | None] = mapped_column(Float)
    # Tokens in the training split of the run's pretraining corpus (how many passes over
    # it the target makes); NULL until a search of the run prepared its data, since schema 7.
    train_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # The URL of the run's checkpoint store (evo.checkpoints); NULL for a run recorded
    # before schema 9 (its checkpoints are in results/NAME/trials where it is resumed).
    checkpoints: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The driver (`evo run`/`evo resume`) that holds the run, by its lease (see
    # `evo.storage.leases`). `lease` counts the times a driver took the run: the fencing
    # token each write of the holder is checked against. Times are seconds since the epoch
    # by the database's clock, never a host's; `lease_expires` is NULL once released.
    lease: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    driver_host: Mapped[str | None] = mapped_column(String(255))
    driver_pid: Mapped[int | None] = mapped_column(Integer)
    driver_started: Mapped[float | None] = mapped_column(Float)
    heartbeat: Mapped[float | None] = mapped_column(Float)  # the holder's last sign of life
    lease_expires: Mapped[float | None] = mapped_column(Float)


class GenomeRow(Base):
    __tablename__ = "evo_genomes"
    __table_args__ = (UniqueConstraint("run_id", "hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("evo_runs.id", ondelete="CASCADE"))
    hash: Mapped[str] = mapped_column(String(64))
    genes: Mapped[dict[str, Any]] = mapped_column(JSON)


class TrialRow(Base):
    """One training of one genome at one rung: a decision of the search and one attempt
    at carrying it out (a lost worker's retry is another row of the same decision)."""

    __tablename__ = "evo_trials"
    __table_args__ = (status_check(__tablename__, TRIAL_STATUSES),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    genome_id: Mapped[int] = mapped_column(
        ForeignKey("evo_genomes.id", ondelete="CASCADE"), index=True
    )
    generation: Mapped[int | None] = mapped_column(Integer)  # generational mode only
    rung: Mapped[int] = mapped_column(Integer, default=0)
    # The search's decisions in the order it made them; attempts of one decision share it.
    decision: Mapped[int | None] = mapped_column(Integer)
    # How many results the search had recorded when it made the decision.
    seen: Mapped[int | None] = mapped_column(Integer)
    # The order results were recorded in (increasing, not necessarily consecutive).
    recorded: Mapped[int | None] = mapped_column(Integer)
    budget: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the rung's, as TrainConfig
    seed: Mapped[int | None] = mapped_column(BigInteger)
    continued_from: Mapped[int | None] = mapped_column(
        ForeignKey("evo_trials.id", name="evo_trials_continued_from_fkey")
    )
    checkpoint: Mapped[str | None] = mapped_column(Text)  # the stable checkpoint it left
    attempt: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    host: Mapped[str | None] = mapped_column(String(255))
    device: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What the trial measured, by name of evo.metrics.METRICS (a metric it did not
    # measure is absent); its compute (steps, tokens, wall_seconds) among them.
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Idle workers' time that trained this trial (their cores lent to it), worker-seconds.
    lent_seconds: Mapped[float | None] = mapped_column(Float)
    pretrain: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)


class CurvePointRow(Base):
    __tablename__ = "evo_curve_points"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(
        ForeignKey("evo_trials.id", ondelete="CASCADE"), index=True
    )
    stage: Mapped[str] = mapped_column(String(16))
    step: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)  # NaN reads back as None
    val_loss: Mapped[float | None] = mapped_column(Float)


class MemberRow(Base):
    """One slot of a generation's population; a genome may fill several slots."""

    __tablename__ = "evo_population"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("evo_runs.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    genome_id: Mapped[int] = mapped_column(ForeignKey("evo_genomes.id", ondelete="CASCADE"))


class GenerationRow(Base):
    __tablename__ = "evo_generations"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("evo_runs.id", ondelete="CASCADE"), primary_key=True
    )
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    rng_state: Mapped[Any] = mapped_column(JSON)
    stats: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SessionRow(Base):
    """One `evo run` or `evo resume` of a run: when, and with how many workers."""

    __tablename__ = "evo_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("evo_runs.id", ondelete="CASCADE"))
    workers: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PromotionRow(Base):
    __tablename__ = "evo_promotions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("evo_runs.id", ondelete="CASCADE"))
    genome_id: Mapped[int] = mapped_column(ForeignKey("evo_genomes.id", ondelete="CASCADE"))
    out_dir: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ValidationRow(Base):
    """One retraining of a genome at a validation budget with one seed (`evo validate`):
    a check of the search's ranking, outside the search's own budget and history."""

    __tablename__ = "evo_validations"
    __table_args__ = (
        status_check(__tablename__, TRIAL_STATUSES),
        UniqueConstraint("genome_id", "budget_key", "seed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("evo_runs.id", ondelete="CASCADE"), index=True)
    genome_id: Mapped[int] = mapped_column(ForeignKey("evo_genomes.id", ondelete="CASCADE"))
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)  # as TrainConfig keys
    budget_key: Mapped[str] = mapped_column(String(64))  # the budget as text, for uniqueness
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    host: Mapped[str | None] = mapped_column(String(255))
    worker: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)


class ForecastRow(Base):
    """A run's latest forecast of its target (`evo.schedule.forecast`, when the target lies
    beyond the top rung): the law fitted to the rung scores after result `recorded`."""

    __tablename__ = "evo_forecasts"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("evo_runs.id", ondelete="CASCADE"), primary_key=True
    )
    metric: Mapped[str] = mapped_column(String(64))  # the objective forecast
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)  # the target, as TrainConfig keys
    level: Mapped[float] = mapped_column(Float)  # the intervals' coverage
    recorded: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)  # the law's shared exponent
    law_error: Mapped[float] = mapped_column(Float)  # κ
    noise: Mapped[float] = mapped_column(Float)  # one score's seed noise, on the law's scale
    noise_source: Mapped[str] = mapped_column(String(16))  # "residuals" or "assumed"
    check: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the law tried on the run


class PredictionRow(Base):
    """A genome's predicted score at its run's target, from the run's latest forecast."""

    __tablename__ = "evo_predictions"

    genome_id: Mapped[int] = mapped_column(
        ForeignKey("evo_genomes.id", ondelete="CASCADE"), primary_key=True
    )
    run_id: Mapped[int] = mapped_column(ForeignKey("evo_runs.id", ondelete="CASCADE"), index=True)
    mean: Mapped[float] = mapped_column(Float)  # in the metric's unit, as low and high
    low: Mapped[float] = mapped_column(Float)
    high: Mapped[float] = mapped_column(Float)
    sd: Mapped[float] = mapped_column(Float)  # the law's uncertainty, without the seed noise
    measured: Mapped[bool] = mapped_column(Boolean)  # scored at the target: no prediction
