"""A PostgreSQL server for the storage tests: the one `EVO_TEST_POSTGRES_URL` names, or a
throwaway one started from the PostgreSQL binaries installed here (Debian's
`postgresql` package: `apt-get install postgresql`), in a temporary folder, listening
on a free port of 127.0.0.1 only, with a password. initdb refuses to run as root, so as
root the server runs as the `postgres` user that the package creates.

Without either, the PostgreSQL cases of the suite fail, saying what is missing: a
storage test that passed without its PostgreSQL half would claim what was not tested.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

URL_ENV = "EVO_TEST_POSTGRES_URL"  # an external server's URL; its user may CREATE DATABASE
SERVER_USER = "postgres"  # who runs a throwaway server when the suite runs as root
MISSING = (
    "the storage tests run against PostgreSQL too, and no server is at hand: install "
    "PostgreSQL's binaries (Debian: apt-get install postgresql; .ci/run does) or set "
    f"{URL_ENV} to a database URL whose user may create databases"
)


class NoPostgres(RuntimeError):
    """Neither an external server nor PostgreSQL's binaries are here."""


def binaries() -> Path | None:
    """The folder of pg_ctl and initdb: on the PATH, else Debian's newest version."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3])
    )
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user() -> list[str]:
    """The prefix that runs a command as the server's user: none unless we are root."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError as err:
        missing = f"running as root and there is no {SERVER_USER!r} user; {MISSING}"
        raise NoPostgres(missing) from err
    return ["runuser", "-u", SERVER_USER, "--"]


@contextmanager
def throwaway_server() -> Iterator[URL]:
    """Start a server in a temporary folder; yield its superuser's URL; stop and delete it."""
    bin_dir = binaries()
    if bin_dir is None:
        raise NoPostgres(MISSING)
    prefix = _as_server_user()
    # Under /tmp itself, not pytest's folder (mode 700, root's): the server's user must
    # reach it, and the socket's path must stay short.
    folder = Path(tempfile.mkdtemp(prefix="evo-pg-", dir="/tmp"))
    password = secrets.token_hex(16)
    (folder / "password").write_text(password)
    if prefix:
        record = pwd.getpwnam(SERVER_USER)
        for path in (folder, folder / "password"):
            os.chown(path, record.pw_uid, record.pw_gid)
    data, port = folder / "data", _free_port()
    run = [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = ["-U", "evo", "-A", "scram-sha-256", f"--pwfile={folder / 'password'}"]
        initdb += ["--locale=C", "--encoding=UTF8"]  # as a server evo is given would be
        subprocess.run(
            [*prefix, str(bin_dir / "initdb"), "-D", str(data), *initdb],
            check=True,
            capture_output=True,
        )
        # fsync off: a test database need not survive a power cut, and it is much faster.
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        subprocess.run(
            [*run, "-o", options, "-l", str(folder / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        yield URL.create("postgresql+psycopg", "evo", password, "127.0.0.1", port, "postgres")
    except subprocess.CalledProcessError as err:
        log = folder / "log"
        detail = log.read_text() if log.exists() else err.stderr.decode(errors="replace")
        raise NoPostgres(f"PostgreSQL did not start: {detail.strip()[-2000:]}") from err
    finally:
        subprocess.run([*run, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[URL]:
    """The external server of `EVO_TEST_POSTGRES_URL`, else a throwaway one."""
    given = os.environ.get(URL_ENV)
    if given:
        yield make_url(given)
        return
    with throwaway_server() as url:
        yield url


@contextmanager
def fresh_database(server: URL, name: str) -> Iterator[str]:
    """A new, empty database `name` on `server`, dropped afterwards (with whatever
    connections a test left open to it); yields its URL with the password."""
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield server.set(database=name).render_as_string(hide_password=False)
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
