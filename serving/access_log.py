"""The access log: one JSON line per request, written off the event loop.

A request costs the event loop a level check and one put on a queue. A background thread
wakes every ``WRITE_EVERY_S``, not per request (waking it for each request, and the two
threads' contention for the interpreter, cost a third of a single-row request's CPU in the
serving benchmark), turns what is queued into JSON lines (time, level, method, path, status,
latency, request id, model version, rows scored, client) and hands them to the
``serving.access`` logger, whose handler ``mlops serve`` points at stderr with the line alone
as the message. A line's level follows its status (below 400: info, 4xx: warning, 5xx:
error), so the logger's level chooses what is written: ``info`` every request, ``warning``
the refused and failed ones, ``error`` the failed ones (``MLOPS_SERVING_ACCESS_LOG_LEVEL``;
``off`` queues nothing at all). Each record also carries the fields as ``record.access`` for
a handler of one's own. Should the lines' stream stop taking them (a pipe no one reads), the
queue is bounded: entries beyond it are dropped and counted on ``/metrics``, and requests are
answered as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

import orjson
from prometheus_client.metrics_core import CounterMetricFamily, Metric

LOGGER = "serving.access"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

Headers = Sequence[tuple[bytes, bytes]]
WRITE_EVERY_S = 0.2
"""How often queued entries are written: the most a line waits."""


def status_level(status: int) -> int:
    """The level of a request's line: info below 400, warning for 4xx, error for 5xx."""
    return logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR


class AccessLog:
    """Queues one entry per request (``record``, on the event loop); a thread writes them.

    At most ``max_queued`` entries wait (a stream no one reads blocks the thread's writes);
    beyond, new entries are dropped and counted in ``dropped``, and serving goes on.
    """

    def __init__(self, logger: logging.Logger | None = None, max_queued: int = 100_000) -> None:
        self.logger = logger or logging.getLogger(LOGGER)
        self.max_queued = max_queued
        self.dropped = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def record(
        self,
        method: str,
        path: str,
        status: int,
        seconds: float,
        headers: Headers,
        rows: int,
        client: tuple[str, int] | None,
    ) -> None:
        """Queue one request's entry, if its level is logged; ``headers`` are the response's."""
        level = status_level(status)
        if not self.logger.isEnabledFor(level):
            return
        if self._queue.qsize() >= self.max_queued:
            self.dropped += 1
            return
        entry = (time.time(), level, method, path, status, seconds, headers, rows, client)
        self._queue.put(entry)

    def metric_families(self) -> list[Metric]:
        """What the access log dropped, as a Prometheus metric family (``/metrics``)."""
        return [
            CounterMetricFamily(
                "mlops_serving_access_log_dropped_lines",
                "Access-log lines dropped because too many were waiting to be written.",
                value=self.dropped,
            )
        ]

    def start(self) -> None:
        """Start the thread that writes the queued entries every ``WRITE_EVERY_S``."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._drain, name="access-log", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the thread."""
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout_s)
            self._thread = None

    def _drain(self) -> None:
        while not self._stopping.wait(WRITE_EVERY_S):
            self._write_queued()
        self._write_queued()

    def _write_queued(self) -> None:
        for _ in range(self._queue.qsize()):  # what is queued now; later entries wait their turn
            try:
                self._write(self._queue.get_nowait())
            except queue.Empty:
                break
            except Exception:  # a broken handler must not stop the lines after it
                logging.getLogger(__name__).exception("Could not write an access-log line")
        for handler in self.logger.handlers:  # a LinesHandler writes the batch now, at once
            handler.flush()

    def _write(self, entry: tuple) -> None:
        at, level, method, path, status, seconds, headers, rows, client = entry
        fields = {
            "time": dt.datetime.fromtimestamp(at, dt.UTC).isoformat(timespec="milliseconds"),
            "level": logging.getLevelName(level).lower(),
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "request_id": None,
            "model_version": None,
            "rows": rows,
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        for name, value in headers:
            if name == b"x-request-id":
                fields["request_id"] = value.decode("latin-1")
            elif name == b"x-model-version":
                fields["model_version"] = value.decode("latin-1")
        line = orjson.dumps(fields).decode()
        record = self.logger.makeRecord(
            self.logger.name, level, __file__, 0, line, None, None, extra={"access": fields}
        )
        record.created, record.msecs = at, (at % 1) * 1000
        self.logger.handle(record)


class LinesHandler(logging.Handler):
    """Keeps the formatted lines until ``flush``, which writes them in one write.

    A line written (and flushed) at a time releases the interpreter's lock at every write, and
    the event loop's thread, waiting for it, takes it each time: in the serving benchmark that
    hand-over cost about 100 us of CPU a request; one write a batch costs it once.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__()
        self.stream = stream
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + "\n")
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:
            lines, self._lines = self._lines, []
        if lines:
            self.stream.write("".join(lines))
            self.stream.flush()


def build_access_log(level: str) -> AccessLog | None:
    """The access log at ``level`` (debug, info, warning, error), or None for ``off``.

    Its logger gets that level and, unless it has a handler already (a logging set-up of one's
    own), a ``LinesHandler`` writing the lines to stderr; it does not pass lines on to the root
    logger.

    Raises:
        ValueError: ``level`` is none of those.
    """
    if level == "off":
        return None
    if level not in LEVELS:
        raise ValueError(
            f"MLOPS_SERVING_ACCESS_LOG_LEVEL is {level!r}; use one of "
            f"{', '.join([*LEVELS, 'off'])}."
        )
    logger = logging.getLogger(LOGGER)
    logger.setLevel(LEVELS[level])
    if not logger.handlers:
        handler = LinesHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return AccessLog(logger)
