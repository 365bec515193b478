"""The inference log: scored requests (raw inputs and predictions), written out in the background.

On the request path a sampled request costs one append to an in-memory queue; a background
task writes what has queued every few seconds, in a worker thread, so scoring never waits on
storage. Two sinks:

- **Parquet** (default): one file per flush and model version under
  ``<artifact store>/inference-log/<model>/date=YYYY-MM-DD/``, written under a hidden temporary
  name and renamed when complete, so a reader never sees half a file. Columns: ``request_id``,
  ``row`` (index in the request), ``logged_at`` (UTC), ``model``, ``version``, then
  ``input.<column>`` per raw input column and ``output.<column>`` per prediction column.
- **SQL** (``MLOPS_INFERENCE_LOG=sql``): the table ``inference_log`` through SQLAlchemy, one row
  per scored row, ``logged_at`` in UTC, inputs and outputs as JSON text.

Requests with the header ``X-Inference-Log: skip`` (the deploy stage's smoke tests) are not
recorded: they are not traffic.

When storage is unavailable the batch is dropped with an error in the log and counted on
``/metrics``; serving goes on. The queue is bounded: beyond ``max_buffer_rows`` rows waiting,
new rows are dropped (and counted) instead of growing memory without bound.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import fsspec
import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops.features import ColumnValues, FeatureSpec

logger = logging.getLogger(__name__)

INPUT_PREFIX = "input."
OUTPUT_PREFIX = "output."
META_COLUMNS = ("request_id", "row", "logged_at", "model", "version")
TABLE_NAME = "inference_log"
MAX_REQUEST_ID = 128


@dataclass(frozen=True)
class LoggedRequest:
    """One scored request as the log keeps it until it is written."""

    request_id: str
    logged_at: float
    model: str
    version: str
    spec: FeatureSpec
    columns: dict[str, ColumnValues]
    count: int
    outputs: dict[str, np.ndarray]


class LogSink(Protocol):
    """Where batches of logged requests go."""

    def write(self, batch: list[LoggedRequest]) -> list[str]:
        """Write the batch; returns where it went (files or table)."""
        ...


def request_id(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is usable, else a new one."""
    if header and len(header) <= MAX_REQUEST_ID and header.isprintable():
        return header
    return uuid.uuid4().hex


# ---------------------------------------------------------------- building tables


def _column_array(values: ColumnValues, text: bool) -> pa.Array:
    kind = pa.string() if text else pa.float64()
    if isinstance(values, pd.Series):
        values = values.tolist()
    try:
        return pa.array(values, type=kind, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # e.g. a CSV column of codes read as numbers
        if text:
            return pa.array([None if pd.isna(v) else str(v) for v in values], type=kind)
        return pa.array(pd.to_numeric(pd.Series(values), errors="coerce"), type=kind)


def requests_table(batch: list[LoggedRequest]) -> pa.Table:
    """One Arrow table of the rows of requests scored by the same model version."""
    spec = batch[0].spec
    counts = [r.count for r in batch]
    total = sum(counts)
    columns: dict[str, pa.Array] = {
        "request_id": pa.array(np.repeat([r.request_id for r in batch], counts), pa.string()),
        "row": pa.array(np.concatenate([np.arange(c, dtype="int32") for c in counts])),
        "logged_at": pa.array(
            np.repeat(np.array([r.logged_at for r in batch]) * 1e6, counts).astype(
                "datetime64[us]"
            ),
            pa.timestamp("us", tz="UTC"),
        ),
        "model": pa.array([batch[0].model] * total, pa.string()),
        "version": pa.array([batch[0].version] * total, pa.string()),
    }
    numeric = set(spec.numeric)
    for name in spec.input_columns:
        parts = [r.columns.get(name, [None] * r.count) for r in batch]
        chained = list(itertools.chain.from_iterable(_as_list(p) for p in parts))
        columns[INPUT_PREFIX + name] = _column_array(chained, text=name not in numeric)
    for name in batch[0].outputs:
        values = np.concatenate([np.asarray(r.outputs[name]) for r in batch])
        columns[OUTPUT_PREFIX + name] = pa.array(
            values.tolist() if values.dtype == object else values
        )
    return pa.table(columns)


def _as_list(values: ColumnValues) -> list:
    return values.tolist() if isinstance(values, pd.Series) else values


def by_version_and_day(
    batch: list[LoggedRequest],
) -> dict[tuple[str, str, str], list[LoggedRequest]]:
    """The batch grouped by (model, version, UTC day), the unit one file holds."""
    groups: dict[tuple[str, str, str], list[LoggedRequest]] = {}
    for logged in batch:
        day = dt.datetime.fromtimestamp(logged.logged_at, dt.UTC).date().isoformat()
        groups.setdefault((logged.model, logged.version, day), []).append(logged)
    return groups


# ---------------------------------------------------------------- sinks


class ParquetSink:
    """Parquet files partitioned by model and date under ``root`` (any fsspec URL)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def write(self, batch: list[LoggedRequest]) -> list[str]:
        written = []
        for (model, version, day), group in by_version_and_day(batch).items():
            folder = f"{self.root}/{model}/date={day}"
            stamp = dt.datetime.now(dt.UTC).strftime("%H%M%S")
            name = f"{stamp}-v{version}-{uuid.uuid4().hex[:8]}.parquet"
            fs, path = fsspec.core.url_to_fs(folder)
            fs.makedirs(path, exist_ok=True)
            temporary = f"{path}/.{name}.tmp"
            with fs.open(temporary, "wb") as handle:
                pq.write_table(requests_table(group), handle)
            fs.mv(temporary, f"{path}/{name}")
            written.append(f"{folder}/{name}")
        return written


class SqlSink:
    """The ``inference_log`` table through SQLAlchemy (created when missing)."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.engine = sa.create_engine(url)
        self.table = inference_log_table(sa.MetaData())
        self.table.metadata.create_all(self.engine)

    def write(self, batch: list[LoggedRequest]) -> list[str]:
        rows = []
        for group in by_version_and_day(batch).values():
            frame = requests_table(group).to_pandas()
            inputs = [c for c in frame.columns if c.startswith(INPUT_PREFIX)]
            outputs = [c for c in frame.columns if c.startswith(OUTPUT_PREFIX)]
            frame["logged_at"] = frame["logged_at"].dt.tz_convert(None)  # naive UTC in SQL
            for record in frame.to_dict("records"):
                rows.append(
                    {
                        **{k: record[k] for k in META_COLUMNS},
                        "logged_at": record["logged_at"].to_pydatetime(),
                        "inputs": _json_text(record, inputs, INPUT_PREFIX),
                        "outputs": _json_text(record, outputs, OUTPUT_PREFIX),
                    }
                )
        with self.engine.begin() as connection:
            connection.execute(self.table.insert(), rows)
        return [f"{self.engine.url.render_as_string(hide_password=True)}#{TABLE_NAME}"]


def inference_log_table(metadata: Any) -> Any:
    """The SQL table's definition (shared by the writer and the monitor's reader)."""
    import sqlalchemy as sa

    return sa.Table(
        TABLE_NAME,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(MAX_REQUEST_ID), nullable=False, index=True),
        sa.Column("row", sa.Integer, nullable=False),
        sa.Column("logged_at", sa.DateTime(), nullable=False, index=True),  # UTC
        sa.Column("model", sa.String(200), nullable=False, index=True),
        sa.Column("version", sa.String(20), nullable=False),
        sa.Column("inputs", sa.Text, nullable=False),
        sa.Column("outputs", sa.Text, nullable=False),
    )


def _json_text(record: dict, columns: Iterable[str], prefix: str) -> str:
    values = {c.removeprefix(prefix): record[c] for c in columns}
    clean = {k: None if _missing(v) else v for k, v in values.items()}
    return orjson.dumps(clean, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


# ---------------------------------------------------------------- the log


@dataclass
class LogCounters:
    """What the log has done, for ``/metrics``."""

    recorded_rows: int = 0
    written_rows: int = 0
    dropped_rows: int = 0
    write_errors: int = 0
    files: int = 0


@dataclass
class InferenceLog:
    """Samples scored requests into a bounded queue and writes them out on ``flush``."""

    sink: LogSink
    sample_rate: float = 1.0
    max_buffer_rows: int = 200_000
    counters: LogCounters = field(default_factory=LogCounters)
    _queue: deque = field(default_factory=deque)
    _queued_rows: int = 0
    _flush_lock: threading.Lock = field(default_factory=threading.Lock)
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self,
        request: str,
        model: Any,
        columns: dict[str, ColumnValues],
        count: int,
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Queue one scored request (a served model's name, version and spec); cheap."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        with self._count_lock:
            if self._queued_rows + count > self.max_buffer_rows:
                self.counters.dropped_rows += count
                return
            self._queued_rows += count
            self.counters.recorded_rows += count
        self._queue.append(
            LoggedRequest(
                request, time.time(), model.name, model.version, model.spec, columns, count, outputs
            )
        )

    def flush(self) -> list[str]:
        """Write everything queued so far; returns where it went. Never raises."""
        with self._flush_lock:
            batch = [self._queue.popleft() for _ in range(len(self._queue))]
            if not batch:
                return []
            rows = sum(r.count for r in batch)
            with self._count_lock:
                self._queued_rows -= rows
            try:
                written = self.sink.write(batch)
            except Exception as error:  # storage trouble must never take serving down
                self.counters.write_errors += 1
                self.counters.dropped_rows += rows
                logger.error("Could not write %d inference-log rows: %s", rows, error)
                return []
            self.counters.written_rows += rows
            self.counters.files += len(written)
            return written

    def render_metrics(self) -> str:
        """Prometheus lines for the log's counters."""
        c = self.counters
        lines = []
        for name, value, help_text in [
            ("recorded_rows", c.recorded_rows, "Rows queued for the inference log."),
            ("written_rows", c.written_rows, "Rows written to the inference log."),
            ("dropped_rows", c.dropped_rows, "Rows dropped (queue full or a failed write)."),
            ("write_errors", c.write_errors, "Failed writes of the inference log."),
        ]:
            metric = f"mlops_inference_log_{name}_total"
            lines += [
                f"# HELP {metric} {help_text}",
                f"# TYPE {metric} counter",
                f"{metric} {value}",
            ]
        return "\n".join(lines) + "\n"


def build_inference_log(settings: Any) -> InferenceLog | None:
    """The log the settings ask for (``MLOPS_INFERENCE_LOG``), or None when it is off.

    Raises:
        ValueError: ``sql`` without ``MLOPS_INFERENCE_LOG_URL``.
    """
    if settings.inference_log == "off":
        return None
    if settings.inference_log == "sql":
        if not settings.inference_log_url:
            raise ValueError(
                "MLOPS_INFERENCE_LOG=sql needs MLOPS_INFERENCE_LOG_URL (a SQLAlchemy URL)."
            )
        sink: LogSink = SqlSink(settings.inference_log_url)
    else:
        sink = ParquetSink(settings.inference_log_root)
    return InferenceLog(
        sink,
        sample_rate=settings.inference_log_sample_rate,
        max_buffer_rows=settings.inference_log_max_buffer_rows,
    )
