"""The inference log: scored requests (as sent, with their predictions), written in the background.

On the request path a sampled request costs one append to an in-memory list: the request
body as received (bytes the service already holds) and the prediction arrays it computed.
Five times a second the event loop turns what queued into Arrow tables (a few microseconds a
request, no body parsing); every ``flush_s`` seconds, or sooner once ``rows_per_file`` rows
wait, a worker thread writes them out (Arrow and Parquet work outside the interpreter lock).
Converting on the loop rather than in the thread matters: a thread doing Python work contends
with the event loop for the interpreter, and measured, that contention cost far more
throughput than the work itself. Turning bodies
into feature columns is left to the reader (:mod:`serving.log_reader`, the drift monitor),
which parses them with the service's own parser, so logging costs the service almost no work
per row. The sinks (Parquet files under ``<artifact store>/inference-log/``, the default, or a
SQL table) and the columns they hold are in :mod:`serving.log_sinks`.

Requests with the header ``X-Inference-Log: skip`` (the deploy stage's smoke tests) are not
recorded: they are not traffic.

Converted rows are also appended to a local journal on the same tick (:mod:`serving.log_spool`),
so a crash of the service loses only the requests answered since the last tick (0.2 s); the
next start replays the rest into the sink. When storage is unavailable (a full disk, a database
down) the write's temporary file is removed, the batch is kept and tried again on the next
write, with an error in the log and on ``/metrics``; serving goes on. The rows waiting are
bounded: beyond ``max_buffer_rows``, new rows are dropped (and counted) instead of growing
memory without bound.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from prefect_mlops.mlops.storage import artifact_store

from .log_sinks import MAX_REQUEST_ID, OUTPUT_PREFIX, ParquetSink, SqlSink
from .log_spool import LogKey, LogSpool, Segment

logger = logging.getLogger(__name__)

EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()


class LoggedRequest(NamedTuple):
    """One scored request as the log keeps it until it is written (a tuple: cheap to make)."""

    request_id: str
    logged_at: float
    model: str
    version: str
    content_type: str
    body: bytes
    count: int
    outputs: dict[str, np.ndarray]


class LogSink(Protocol):
    """Where the log's tables go."""

    def write(self, key: LogKey, table: pa.Table) -> str:
        """Write the requests of one model version and day; returns where they went."""
        ...


_PROCESS_PREFIX = uuid.uuid4().hex[:16]
_SEQUENCE = itertools.count()


def request_id(header: str | None) -> str:
    """The client's ``X-Request-Id`` when it is usable, else a new one.

    New ids are this process's random prefix and a counter: unique across instances and
    restarts, and far cheaper on the request path than a fresh UUID each.
    """
    if header and len(header) <= MAX_REQUEST_ID and header.isprintable():
        return header
    return f"{_PROCESS_PREFIX}{next(_SEQUENCE):016x}"


# ---------------------------------------------------------------- writing


def requests_table(batch: list[LoggedRequest]) -> pa.Table:
    """One Arrow table of requests scored by the same model version: one row per request."""
    counts = np.array([r.count for r in batch], dtype="int32")
    stamps = (np.array([r.logged_at for r in batch]) * 1e6).astype("datetime64[us]")
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([r.request_id for r in batch], pa.string()),
        "logged_at": pa.array(stamps, pa.timestamp("us", tz="UTC")),
        "model": pa.array([batch[0].model] * len(batch), pa.string()),
        "version": pa.array([batch[0].version] * len(batch), pa.string()),
        "content_type": pa.array([r.content_type for r in batch], pa.string()),
        "rows": pa.array(counts),
        "body": pa.array([r.body for r in batch], pa.binary()),
    }
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype("int32"))
    for name in batch[0].outputs:
        values = np.concatenate([np.asarray(r.outputs[name]) for r in batch])
        flat = pa.array(values, from_pandas=True)
        columns[OUTPUT_PREFIX + name] = pa.ListArray.from_arrays(offsets, flat)
    return pa.table(columns)


def by_version_and_day(batch: list[LoggedRequest]) -> dict[LogKey, list[LoggedRequest]]:
    """The batch grouped by (model, version, UTC day), the unit one file holds."""
    groups: dict[tuple[str, str, int], list[LoggedRequest]] = {}
    for logged in batch:
        key = (logged.model, logged.version, int(logged.logged_at // 86_400))
        groups.setdefault(key, []).append(logged)
    return {
        (model, version, dt.date.fromordinal(EPOCH_ORDINAL + day).isoformat()): group
        for (model, version, day), group in groups.items()
    }


# ---------------------------------------------------------------- the log


@dataclass
class LogCounters:
    """What the log has done, for ``/metrics`` and ``/health``."""

    recorded_rows: int = 0
    written_rows: int = 0
    dropped_rows: int = 0
    """Rows not recorded because ``max_buffer_rows`` rows were already waiting."""
    write_errors: int = 0
    files: int = 0
    pending_rows: int = 0
    """Rows recorded and not written yet (queued, converted, or kept after a failed write)."""
    pending_bytes: int = 0
    """Bytes of request bodies those rows hold."""
    recovered_rows: int = 0
    """Rows replayed from the journal of a process that stopped before writing them."""
    journal_errors: int = 0


@dataclass
class Converted:
    """Queued requests turned into Arrow tables, waiting to be written."""

    tables: dict[LogKey, list[pa.Table]] = field(default_factory=dict)
    rows: int = 0
    key_rows: dict[LogKey, int] = field(default_factory=dict)
    key_bytes: dict[LogKey, int] = field(default_factory=dict)
    """Bytes of the request bodies each key's tables hold (what the log's byte cap counts)."""
    segments: list[Segment] = field(default_factory=list)
    """The journal files holding these tables, deleted once they are written."""
    failed: list[LogKey] = field(default_factory=list)
    """Set by ``write``: the keys it could not write, kept for the next write."""

    def add(self, key: LogKey, table: pa.Table, rows: int) -> None:
        """Add one table of ``rows`` scored rows."""
        self.tables.setdefault(key, []).append(table)
        self.key_rows[key] = self.key_rows.get(key, 0) + rows
        self.key_bytes[key] = self.key_bytes.get(key, 0) + body_bytes(table)
        self.rows += rows

    @property
    def bytes(self) -> int:
        """Bytes of request bodies in all its tables."""
        return sum(self.key_bytes.values())


@dataclass
class InferenceLog:
    """Samples scored requests into a bounded queue; ``convert`` and ``write`` put them out.

    In the service, ``record`` and ``convert`` run on the event loop (no lock, no contention
    for the interpreter with another thread) and ``write`` in a worker thread, on what
    ``take`` handed it; ``done`` (on the loop again) deletes its journal files, or keeps what
    failed for the next write. ``flush`` does all of it at once, for callers outside an event
    loop. Rows not yet written (queued, converted or kept) count against ``max_buffer_rows``;
    beyond it new rows are dropped and counted.
    """

    sink: LogSink
    sample_rate: float = 1.0
    max_buffer_rows: int = 200_000
    max_buffer_bytes: int = 256 * 2**20
    """Bytes of request bodies the log may hold unwritten (a storage outage must not let
    memory grow with the traffic); beyond it new rows are dropped and counted, like rows."""
    rows_per_file: int = 100_000
    spool: LogSpool | None = None
    """The local journal that makes converted rows survive a crash (None: memory only)."""
    counters: LogCounters = field(default_factory=LogCounters)
    converted: Converted = field(default_factory=Converted)
    failing: bool = False
    """The last write failed: the next is tried on the write schedule, not as soon as rows pile up."""
    _queue: list = field(default_factory=list)
    _journal_failing: bool = False

    def record(
        self,
        request: str,
        model: Any,
        body: bytes,
        content_type: str,
        count: int,
        outputs: dict[str, np.ndarray],
    ) -> None:
        """Queue one scored request of ``model`` (a served model: name, version); cheap."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        counters = self.counters
        full = counters.pending_rows + count > self.max_buffer_rows
        if full or counters.pending_bytes + len(body) > self.max_buffer_bytes:
            counters.dropped_rows += count
            return
        counters.pending_rows += count
        counters.pending_bytes += len(body)
        counters.recorded_rows += count
        self._queue.append(
            LoggedRequest(
                request, time.time(), model.name, model.version, content_type, body, count, outputs
            )
        )

    def convert(self) -> int:
        """Turn what has queued into Arrow tables and journal them; returns how many rows."""
        batch, self._queue = self._queue, []
        rows = 0
        for key, group in by_version_and_day(batch).items():
            table, count = requests_table(group), sum(r.count for r in group)
            self.converted.add(key, table, count)
            self._journal(key, table)
            rows += count
        return rows

    def take(self) -> Converted:
        """What is converted, for ``write``; the log starts a new batch (and journal file)."""
        taken, self.converted = self.converted, Converted()
        if self.spool is not None:
            taken.segments += self.spool.seal()
        return taken

    def write(self, converted: Converted) -> list[str]:
        """Write converted tables (one file per model version and day). Never raises.

        Safe in a worker thread; the caller then calls ``done`` with the same batch. A key
        that fails, and those after it, are left in ``converted.failed``.
        """
        written = []
        keys = list(converted.tables)
        for index, key in enumerate(keys):
            try:
                written.append(self.sink.write(key, pa.concat_tables(converted.tables[key])))
            except Exception as error:  # storage trouble must never take serving down
                converted.failed = keys[index:]
                kept = sum(converted.key_rows[k] for k in converted.failed)
                self.counters.write_errors += 1
                logger.error(
                    "Could not write %d inference-log rows (kept for the next write, %d rows "
                    "waiting of at most %d): %s",
                    kept,
                    self.counters.pending_rows,
                    self.max_buffer_rows,
                    error,
                )
                break
            self.counters.written_rows += converted.key_rows[key]
            self.counters.files += 1
        return written

    def done(self, converted: Converted) -> None:
        """A batch handed to ``write`` is out: written rows stop counting, failed ones are kept.

        The journal files of a batch are deleted only once all of it is written: kept rows keep
        their files (a crash replays them; rows of the same files that were written may then be
        written twice, and ``request_id`` tells them apart). Nothing is journalled again here,
        on the event loop, however large the backlog.
        """
        kept = Converted()
        for key in converted.failed:
            kept.tables[key] = converted.tables[key]
            kept.key_rows[key] = converted.key_rows[key]
            kept.key_bytes[key] = converted.key_bytes[key]
            kept.rows += converted.key_rows[key]
        self.counters.pending_rows -= converted.rows - kept.rows
        self.counters.pending_bytes -= converted.bytes - kept.bytes
        self.failing = bool(converted.failed)
        if kept.rows:
            kept.segments = converted.segments
            self.converted = _merge(kept, self.converted)
        elif self.spool is not None:
            self.spool.discard(converted.segments)

    def recover(self) -> int:
        """Take in the journal of processes that stopped before writing it; returns its rows.

        The rows are written with the next write, and their journal files deleted then.
        """
        if self.spool is None:
            return 0
        recovered = Converted()
        for segment, tables in self.spool.adopt_orphans():
            for key, table in tables:
                recovered.add(key, table, int(pc.sum(table.column("rows")).as_py() or 0))
            recovered.segments.append(segment)
        if recovered.segments:
            logger.warning(
                "Replaying %d inference-log rows from %d journal file(s) a stopped process left",
                recovered.rows,
                len(recovered.segments),
            )
        self.counters.recovered_rows += recovered.rows
        self.counters.pending_rows += recovered.rows
        self.counters.pending_bytes += recovered.bytes
        self.converted = _merge(recovered, self.converted)
        return recovered.rows

    def flush(self) -> list[str]:
        """Convert and write everything recorded so far; returns where it went. Never raises."""
        self.convert()
        if not self.converted.rows:
            return []
        taken = self.take()
        written = self.write(taken)
        self.done(taken)
        return written

    def close(self) -> None:
        """Let go of the journal: whatever it still holds is replayed by the next start."""
        if self.spool is not None:
            self.spool.release(self.converted.segments)
            self.converted.segments = []
            self.spool.close()

    def _journal(self, key: LogKey, table: pa.Table) -> None:
        if self.spool is None:
            return
        try:
            self.spool.append(key, table)
        except OSError as error:  # the rows stay in memory; only crash safety is lost
            self.counters.journal_errors += 1
            if not self._journal_failing:
                logger.error(
                    "Could not journal inference-log rows to %s (a crash would lose them "
                    "until this recovers): %s",
                    self.spool.folder,
                    error,
                )
            self._journal_failing = True
        else:
            if self._journal_failing:
                logger.warning("The inference-log journal is written again")
            self._journal_failing = False

    def metric_families(self) -> list[Metric]:
        """The log's counters as Prometheus metric families (``/metrics``)."""
        c = self.counters
        families = []
        for name, kind, value, help_text in [
            (
                "recorded_rows",
                CounterMetricFamily,
                c.recorded_rows,
                "Rows queued for the inference log.",
            ),
            (
                "written_rows",
                CounterMetricFamily,
                c.written_rows,
                "Rows written to the inference log.",
            ),
            (
                "dropped_rows",
                CounterMetricFamily,
                c.dropped_rows,
                "Rows dropped because max_buffer_rows rows were waiting.",
            ),
            (
                "write_errors",
                CounterMetricFamily,
                c.write_errors,
                "Failed writes of the inference log.",
            ),
            (
                "pending_rows",
                GaugeMetricFamily,
                c.pending_rows,
                "Rows recorded and not written yet.",
            ),
            (
                "pending_bytes",
                GaugeMetricFamily,
                c.pending_bytes,
                "Request-body bytes of those rows.",
            ),
            (
                "recovered_rows",
                CounterMetricFamily,
                c.recovered_rows,
                "Rows replayed from a stopped process's journal.",
            ),
            ("journal_errors", CounterMetricFamily, c.journal_errors, "Failed journal appends."),
        ]:
            families.append(kind(f"mlops_inference_log_{name}", help_text, value=value))
        return families


def body_bytes(table: pa.Table) -> int:
    """Bytes of the request bodies in a requests table."""
    return int(pc.sum(pc.binary_length(table.column("body"))).as_py() or 0)


def _merge(first: Converted, then: Converted) -> Converted:
    """One batch holding ``first``'s tables before ``then``'s."""
    merged = Converted(segments=first.segments + then.segments)
    for batch in (first, then):
        for key, tables in batch.tables.items():
            merged.tables.setdefault(key, []).extend(tables)
            merged.key_rows[key] = merged.key_rows.get(key, 0) + batch.key_rows[key]
            merged.key_bytes[key] = merged.key_bytes.get(key, 0) + batch.key_bytes[key]
        merged.rows += batch.rows
    return merged


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
        store = artifact_store(settings)
        sink = ParquetSink(store.inference_log_root, store.options)
    return InferenceLog(
        sink,
        sample_rate=settings.inference_log_sample_rate,
        max_buffer_rows=settings.inference_log_max_buffer_rows,
        max_buffer_bytes=settings.inference_log_max_buffer_bytes,
        spool=LogSpool(settings.inference_log_journal_root),
    )
