"""A driver's hold on its run (`evo run`, `evo resume`): it takes the run's lease before
doing anything, renews it from a heartbeat thread (and with every write, see
`evo.storage.leases`), and gives it up when it stops. A second driver of a run whose
driver is alive is refused; one whose driver's lease has expired (or whose driver is a
process of this host that no longer exists) takes it over.

The heartbeat interval is `EVO_HEARTBEAT_SECONDS` (default 20 s), and a lease lasts two
intervals, as Optuna's `grace_period` defaults to twice its `heartbeat_interval`: a driver
that dies shows as lost, and can be taken over, at most two intervals later.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from pathlib import Path
from types import TracebackType

from sqlalchemy.exc import SQLAlchemyError

from evo.storage import DriverRecord, LeaseLost, Storage
from llm.errors import UserError

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "EVO_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 20.0
LEASE_INTERVALS = 2  # a lease lasts this many heartbeat intervals


class LeaseHeld(UserError):
    """Another driver, alive, holds the run."""


def heartbeat_seconds() -> float:
    """The heartbeat interval: `EVO_HEARTBEAT_SECONDS`, or the default."""
    text = os.environ.get(HEARTBEAT_ENV)
    if text is None:
        return DEFAULT_HEARTBEAT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise UserError(f"{HEARTBEAT_ENV} must be a positive number of seconds, not {text!r}")
    return seconds


def gone(driver: DriverRecord) -> bool:
    """Whether the driver was a process of this host that no longer exists (killed): its
    lease need not be waited out."""
    if driver.host != socket.gethostname() or driver.pid == os.getpid():
        return False
    try:
        os.kill(driver.pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, as another user's process
        return False
    return _zombie(driver.pid)


def _zombie(pid: int) -> bool:
    """Whether the process has died and waits for its parent to read its exit (Linux's
    /proc says so; elsewhere it counts as alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class RunLease:
    """The run's lease, held by this process while the `with` block runs."""

    def __init__(self, storage: Storage, name: str, interval: float | None = None) -> None:
        self.storage, self.name = storage, name
        self.interval = heartbeat_seconds() if interval is None else interval
        self._stop = threading.Event()
        self._heart = threading.Thread(target=self._beat, name="evo-heartbeat", daemon=True)

    def check_free(self) -> None:
        """Refuse (`LeaseHeld`) a run whose driver is alive, writing nothing: what a
        driver checks before anything else, and then again as it takes the lease."""
        holder = self.storage.require_run(self.name).driver
        if holder is not None and holder.alive and not gone(holder):
            raise self._held(holder)

    def __enter__(self) -> RunLease:
        holder = self.storage.require_run(self.name).driver
        dead = holder is not None and holder.alive and gone(holder)
        taken = self.storage.take_lease(
            self.name,
            socket.gethostname(),
            os.getpid(),
            LEASE_INTERVALS * self.interval,
            replacing=holder.lease if dead and holder is not None else None,
        )
        if not taken:
            raise self._held(self.storage.require_run(self.name).driver)
        self._heart.start()
        return self

    def _held(self, holder: DriverRecord | None) -> LeaseHeld:
        return LeaseHeld(
            f"run {self.name!r} is being run by {holder}; stop that process, or wait: a "
            f"driver that dies is taken over once its lease expires ({LEASE_INTERVALS} "
            f"heartbeats, {HEARTBEAT_ENV})"
        )

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._heart.join()
        self.storage.release_lease()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.renew_lease()
            except LeaseLost as lost:
                log.error("evo: %s", lost)  # the driver's next write stops it
                return
            except SQLAlchemyError as err:  # a database busy or away for a moment
                log.warning("evo: the heartbeat of run %r failed: %s", self.name, err)
