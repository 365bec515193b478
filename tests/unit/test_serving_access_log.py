"""The access log's queue: bounded when its stream stops taking lines."""

from __future__ import annotations

import logging
import threading

from prefect_mlops.serving.access_log import AccessLog


class Stuck(logging.Handler):
    """A stream no one reads: every write waits until ``freed`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.freed, self.written = threading.Event(), 0

    def emit(self, record: logging.LogRecord) -> None:
        self.freed.wait()
        self.written += 1


def test_a_stuck_stream_drops_and_counts_lines_and_never_blocks_a_request():
    logger = logging.getLogger("tests.access-log.stuck")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    stuck = Stuck()
    logger.addHandler(stuck)
    access = AccessLog(logger, max_queued=5)
    access.start()
    try:
        for _ in range(20):  # returns at once though nothing is written
            access.record("POST", "/invocations", 200, 0.001, [], 1, None)
        assert 10 <= access.dropped <= 15
        assert [s.value for s in access.metric_families()[0].samples] == [access.dropped]
    finally:
        stuck.freed.set()
        access.stop()
        logger.removeHandler(stuck)
    assert stuck.written + access.dropped == 20  # what was queued was written at the stop
