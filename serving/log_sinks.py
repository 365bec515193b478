"""Where the inference log goes: Parquet files in the artifact store, or a SQL table.

Both hold one row per scored request; the columns are the log's format, shared with its reader
(:mod:`serving.log_reader`):

- **Parquet** (default): one file per write and model version under
  ``<artifact store>/inference-log/<model>/date=YYYY-MM-DD/``, written under a hidden temporary
  name and renamed when complete, so a reader never sees half a file. One row per request:
  ``request_id``, ``logged_at`` (UTC), ``model``, ``version``, ``content_type``, ``rows``,
  ``body`` (the request body) and ``output.<column>`` (a list per request) per prediction column.
- **SQL** (``MLOPS_INFERENCE_LOG=sql``): the table ``inference_log`` through SQLAlchemy, one row
  per request, ``logged_at`` in UTC, the body as text and the outputs as JSON.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from prefect_mlops.mlops.storage import open_url

from .log_spool import LogKey

OUTPUT_PREFIX = "output."
REQUEST_COLUMNS = ("request_id", "logged_at", "model", "version", "content_type", "rows", "body")
TABLE_NAME = "inference_log"
MAX_REQUEST_ID = 128
DATE_PREFIX = "date="
"""Parquet files of one model are in one folder per UTC day: ``<model>/date=YYYY-MM-DD/``."""


def model_folder(root: str, model: str) -> str:
    """The Parquet log's folder of ``model`` under the log's ``root``."""
    return f"{root.rstrip('/')}/{model}"


def day_folder(root: str, model: str, day: str) -> str:
    """The folder of ``model``'s files of one UTC day (``YYYY-MM-DD``)."""
    return f"{model_folder(root, model)}/{DATE_PREFIX}{day}"


class ParquetSink:
    """Parquet files partitioned by model and date under ``root`` (any fsspec URL).

    Args:
        root: The log's root folder.
        options: fsspec storage options (None: the artifact store's, for a URL on it).
    """

    def __init__(self, root: str, options: Mapping[str, Any] | None = None) -> None:
        self.root = root.rstrip("/")
        self.options = options

    def write(self, key: LogKey, table: pa.Table) -> str:
        model, version, day = key
        folder = day_folder(self.root, model, day)
        stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S")
        name = f"{stamp}-v{version}-{uuid.uuid4().hex[:8]}.parquet"
        fs, path = open_url(folder, self.options)
        fs.makedirs(path, exist_ok=True)
        temporary = f"{path}/.{name}.tmp"
        try:
            with fs.open(temporary, "wb") as handle:
                pq.write_table(table, handle)
            fs.mv(temporary, f"{path}/{name}")
        except BaseException:  # a full disk, a lost connection: leave no half file behind
            with contextlib.suppress(Exception):
                if fs.exists(temporary):
                    fs.rm(temporary)
            raise
        return f"{folder}/{name}"


class SqlSink:
    """The ``inference_log`` table through SQLAlchemy (created when missing)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        from prefect_mlops.mlops.sql import create_tables, open_engine

        self.engine = open_engine(url)
        self.table = inference_log_table(sa.MetaData())
        create_tables(self.table.metadata, self.engine)

    def write(self, key: LogKey, table: pa.Table) -> str:
        outputs = [c for c in table.column_names if c.startswith(OUTPUT_PREFIX)]
        stamps = table.column("logged_at").to_pandas().dt.tz_convert(None)  # naive UTC in SQL
        values = {c: table.column(c).to_pylist() for c in (*REQUEST_COLUMNS, *outputs)}
        rows = [
            {
                **{c: values[c][i] for c in REQUEST_COLUMNS if c != "body"},
                "logged_at": stamps.iloc[i].to_pydatetime(),
                "body": values["body"][i].decode("utf-8", errors="replace"),
                "outputs": orjson.dumps(
                    {c.removeprefix(OUTPUT_PREFIX): values[c][i] for c in outputs}
                ).decode(),
            }
            for i in range(table.num_rows)
        ]
        with self.engine.begin() as connection:
            connection.execute(self.table.insert(), rows)
        return f"{self.engine.url.render_as_string(hide_password=True)}#{TABLE_NAME}"


def inference_log_table(metadata: Any) -> Any:
    """The SQL table's definition (shared by the writer and the monitor's reader)."""
    import sqlalchemy as sa

    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(MAX_REQUEST_ID), nullable=False, index=True),
        sa.Column("logged_at", sa.DateTime(), nullable=False, index=True),  # UTC
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("version", sa.String(20), nullable=False),
        sa.Column("content_type", sa.String(200), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
    )
