"""How stage flows run inside the retraining pipeline's process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


@contextmanager
def in_process_stages() -> Iterator[None]:
    """Run stage sub-flows without heartbeats of their own.

    A sub-flow called in-process shares the parent flow run's process, and the parent keeps
    sending heartbeats, so a crash is still detected. Prefect 3.8 joins each flow run's
    heartbeat thread at exit while that thread sleeps in 1 s steps, which adds about 1 s to
    every stage (measured in benchmarks/pipeline.py: 1.09 s for an empty sub-flow, 0.10 s
    without its heartbeat).
    """
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
