"""A real PostgreSQL server for the tests: Debian's binaries, a temp data folder, loopback only.

``make test`` installs Debian's ``postgresql`` package (``infra/local/install_postgres.sh``);
the package's own cluster is not used. PostgreSQL refuses to run as root, so under root the
server runs as the ``postgres`` user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.ports import free_port

USER = "mlops"
PASSWORD = "test-only-password"  # a throwaway server in a temp folder, gone after the session


def postgres_bin_dir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: Debian's newest, or the one on PATH."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_major_version)
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _major_version(path: str) -> int:
    return int(Path(path).parts[-3]) if Path(path).parts[-3].isdigit() else 0


@dataclass(frozen=True)
class PostgresServer:
    """A running server: its port and how to reach a database on it."""

    port: int
    bin_dir: Path

    def url(self, database: str, driver: str = "") -> str:
        """SQLAlchemy URL of ``database`` (``driver``: e.g. ``+asyncpg`` for Prefect)."""
        return f"postgresql{driver}://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create a database; returns its SQLAlchemy URL (psycopg2, SQLAlchemy's default)."""
        import psycopg2

        connection = psycopg2.connect(self.url("postgres"))
        try:
            connection.autocommit = True  # CREATE DATABASE refuses to run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)


def _as_postgres_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix and owner that run the server as a non-root user."""
    if os.geteuid() != 0:
        return [], None, None
    account = pwd.getpwnam("postgres")  # created by Debian's postgresql package
    return ["runuser", "-u", "postgres", "--"], account.pw_uid, account.pw_gid


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a fresh PostgreSQL server on 127.0.0.1 in a temp folder; stop and delete it after."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed (run infra/local/install_postgres.sh)")
    prefix, uid, gid = _as_postgres_user()
    root = Path(tempfile.mkdtemp(prefix="mlops-postgres-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    (root / "password").write_text(PASSWORD)
    if uid is not None:
        for path in (root, sockets, root / "password"):
            os.chown(path, uid, gid)
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run([*prefix, *command], check=True, capture_output=True, text=True)

    try:
        run(
            str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
            f"--pwfile={root / 'password'}", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip
        options = (
            f"-h 127.0.0.1 -p {port} -k {sockets} -c max_connections=300 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        run(
            str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        try:
            yield PostgresServer(port=port, bin_dir=bin_dir)
        finally:
            run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)
