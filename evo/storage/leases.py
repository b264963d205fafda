"""Driver leases: which process drives a run, and the fencing of its writes.

A driver (`evo run`/`evo resume`) takes its run's lease with one conditional UPDATE of the
run's row, which succeeds only when no other driver holds a live lease (or the one that
does is known to be dead); the UPDATE adds one to the run's `lease` number, which the
winner keeps as its fencing token. Every later write of that driver first renews the
lease with an UPDATE that matches only while the row still has its token, in the same
transaction as the write: a driver that stalled past its lease while another took the run
over finds its token gone and writes nothing more (`LeaseLost`). Its heartbeat, between
writes, is the same UPDATE alone.

Lease times are read from the database's clock, in SQL, so that hosts whose clocks
disagree still agree on whether a lease has expired. Optuna's heartbeat
(`heartbeat_interval`, `grace_period`, `fail_stale_trials`) marks a dead process's trials
failed; it does not keep two processes off one study, which a lease does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Float, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from evo.storage.models import RunRow
from llm.errors import UserError


class database_seconds(FunctionElement[float]):  # named as the SQL function it is
    """Seconds since the epoch by the database's clock (not this host's)."""

    type = Float()
    inherit_cache = True


@compiles(database_seconds)
def _seconds_sql(element: database_seconds, compiler: Any, **kw: Any) -> str:
    return "CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS DOUBLE PRECISION)"


@compiles(database_seconds, "postgresql")
def _seconds_postgresql(element: database_seconds, compiler: Any, **kw: Any) -> str:
    # clock_timestamp(): now, not when the transaction began (what now() gives).
    return "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)"


@compiles(database_seconds, "sqlite")
def _seconds_sqlite(element: database_seconds, compiler: Any, **kw: Any) -> str:
    return "((julianday('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True)
class DriverRecord:
    """The driver that holds (or last held) a run."""

    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime  # its last sign of life
    lease: int  # its lease number
    alive: bool  # its lease is held and has not expired, by the database's clock

    def __str__(self) -> str:
        return f"host {self.host} pid {self.pid}"


@dataclass(frozen=True)
class Lease:
    """A lease this process holds: its run's row, its number, how long a renewal lasts."""

    run_id: int
    run: str
    number: int
    seconds: float


class LeaseLost(UserError):
    """Another driver took over the run after this one's lease expired: it must stop."""


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


def driver_of(row: RunRow, now: float) -> DriverRecord | None:
    """The run's driver as of `now` (the database's clock); None if it never had one."""
    if row.driver_host is None or row.driver_pid is None:
        return None
    started, beat = row.driver_started or 0.0, row.heartbeat or 0.0
    alive = row.lease_expires is not None and row.lease_expires > now
    host, pid = row.driver_host, row.driver_pid
    return DriverRecord(host, pid, _time(started), _time(beat), row.lease, alive)


def take(
    session: Session, run_id: int, host: str, pid: int, seconds: float, replacing: int | None
) -> int | None:
    """Take the run's lease for `seconds` if it is free: released, expired, or number
    `replacing` (a holder known to be dead). Returns the new lease number; None when a
    live driver holds it."""
    now = database_seconds()
    free = (
        RunRow.lease_expires.is_(None)
        | (RunRow.lease_expires <= now)
        | (RunRow.lease == (-1 if replacing is None else replacing))
    )
    taken = session.execute(
        update(RunRow)
        .where(RunRow.id == run_id, free)
        .values(
            lease=RunRow.lease + 1,
            driver_host=host,
            driver_pid=pid,
            driver_started=now,
            heartbeat=now,
            lease_expires=now + seconds,
        )
        .execution_options(synchronize_session=False)
    )
    if taken.rowcount != 1:
        return None
    return session.scalar(select(RunRow.lease).where(RunRow.id == run_id))


def renew(session: Session, lease: Lease) -> None:
    """Renew the lease, first thing in a write's transaction; `LeaseLost` if another driver
    has taken the run (the transaction then writes nothing)."""
    now = database_seconds()
    renewed = session.execute(
        update(RunRow)
        .where(RunRow.id == lease.run_id, RunRow.lease == lease.number)
        .values(heartbeat=now, lease_expires=now + lease.seconds)
        .execution_options(synchronize_session=False)
    )
    if renewed.rowcount == 1:
        return
    row = session.get(RunRow, lease.run_id)
    holder = "" if row is None else f" by host {row.driver_host} pid {row.driver_pid}"
    raise LeaseLost(
        f"run {lease.run!r} was taken over{holder} after this driver's lease expired "
        f"(it held lease {lease.number}); this driver stops without writing more"
    )


def release(session: Session, lease: Lease) -> None:
    """Give the lease up, if it is still this driver's."""
    session.execute(
        update(RunRow)
        .where(RunRow.id == lease.run_id, RunRow.lease == lease.number)
        .values(lease_expires=None)
        .execution_options(synchronize_session=False)
    )
