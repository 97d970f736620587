"""A real PostgreSQL server for the tests, started on loopback by the tests themselves.

`pg_server` (one per test session) runs `initdb` into a fresh temporary folder and `pg_ctl
start` on a free port, listening on 127.0.0.1 only, its unix socket in that folder too. The
server refuses to run as root, so when the tests run as root (as CI does) it runs as the
`postgres` system user, which owns the folder. It is stopped, and the folder removed, when the
session ends. `pg_url` gives each test a database of its own.

The binaries come from `/usr/lib/postgresql/*/bin` (Debian's `postgresql` package, which
`.ci/ensure-postgres` installs). Without them the fixture fails loudly: tests that need
PostgreSQL are never skipped.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

__all__ = ["PgServer", "pg_server", "pg_url", "running_server"]


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=_version_key)
    if not found:
        raise RuntimeError(
            "the PostgreSQL server is not installed (no /usr/lib/postgresql/*/bin/postgres): "
            "run .ci/ensure-postgres (apt-get install postgresql); these tests are not skipped"
        )
    return Path(found[-1]).parent


def _version_key(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(x) for x in part.split(".") if x.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A running server: its port, its folder, and the superuser's URL per database."""

    port: int
    folder: Path
    user: str = "postgres"

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        """A libpq URL for `database` as `user` (trust authentication: no password)."""
        return f"postgresql://{user or self.user}@127.0.0.1:{self.port}/{database}"

    def admin(self, database: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection (autocommit)."""
        return psycopg.connect(self.url(database), autocommit=True)

    def new_database(self) -> str:
        """Create an empty database; returns its name."""
        name = f"t_{secrets.token_hex(6)}"
        with self.admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


@contextlib.contextmanager
def running_server() -> Iterator[PgServer]:
    """Start a throw-away PostgreSQL server on 127.0.0.1; stopped and removed on exit.

    Also what the benchmark's team part uses (bench/run.py --team).
    """
    bin_dir = _bin_dir()
    folder = Path(tempfile.mkdtemp(prefix="be-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        entry = pwd.getpwnam("postgres")  # KeyError: the package creates this user
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    log = folder / "server.log"
    options = (
        f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={folder} "
        # Test data: speed over durability (nothing here survives the session anyway).
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    try:
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "initdb"),
                    "-D",
                    str(data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            env=env,
            cwd=folder,
        )
        subprocess.run(
            _as_postgres(
                [
                    str(bin_dir / "pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    str(data),
                    "-l",
                    str(log),
                    "-o",
                    options,
                ]
            ),
            check=True,
            capture_output=True,
            env=env,
            cwd=folder,
        )
    except subprocess.CalledProcessError as exc:
        text = exc.stderr.decode(errors="replace") if exc.stderr else ""
        if log.exists():
            text += log.read_text(errors="replace")
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"could not start PostgreSQL: {text}") from exc
    try:
        yield PgServer(port, folder)
    finally:
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"]),
            capture_output=True,
            env=env,
            cwd=folder,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole test session, on 127.0.0.1."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A URL to an empty database of this test's own."""
    return pg_server.url(pg_server.new_database())
