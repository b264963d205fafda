"""The dashboard's database, opened once it exists: a dashboard may be started before the
search it watches has created its database, or while it is creating it."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from sqlalchemy.engine import make_url

from evo.storage import Storage
from evo.storage.models import Base, SchemaRow
from llm.errors import UserError


class Database:
    """A read-only `Storage` at `url`, opened on first use that finds the database made."""

    def __init__(self, source: Storage | str) -> None:
        self._storage = source if isinstance(source, Storage) else None
        self.url = source.url if isinstance(source, Storage) else source
        self._lock = threading.Lock()

    def storage(self) -> Storage | None:
        """The storage; None while the database is not there yet or still being made.
        A database that cannot be read for any other reason is a UserError."""
        with self._lock:
            if self._storage is None:
                try:
                    self._storage = Storage(self.url, create=False, read_only=True)
                except UserError:
                    if being_created(self.url):
                        return None
                    raise
            return self._storage


def being_created(url: str) -> bool:
    """Whether the SQLite database at `url` is yet to be made by `evo run`: no file, an
    empty one, or one whose tables are being created (all of them evo's, and the schema
    version, written last, not there yet). Only read, never written."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return False
    file = Path(parsed.database)
    if not file.exists() or file.stat().st_size == 0:
        return True
    try:
        uri = f"{file.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            listed = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {name for (name,) in listed}
            if SchemaRow.__tablename__ in tables:
                rows = connection.execute(f"SELECT count(*) FROM {SchemaRow.__tablename__}")
                return rows.fetchone()[0] == 0
    except sqlite3.Error:
        return False
    return tables <= {*Base.metadata.tables, "alembic_version"}
