"""SQL storage shared by the allocator history and the inference log: SQLite or PostgreSQL by URL."""

from __future__ import annotations

import zlib
from pathlib import Path

import sqlalchemy as sa


def open_engine(url: str) -> sa.Engine:
    """An engine for ``url``; a SQLite file's folder is created first."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return sa.create_engine(url, pool_pre_ping=True)


def create_tables(metadata: sa.MetaData, engine: sa.Engine) -> None:
    """Create the missing tables, safely when many processes open the store at once.

    On PostgreSQL two concurrent ``CREATE TABLE`` for the same new table collide on the
    catalog, so creators queue on a transaction-scoped advisory lock first.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            key = zlib.crc32(",".join(sorted(metadata.tables)).encode())
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        metadata.create_all(connection)
