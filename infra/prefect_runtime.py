"""How flows run in-process: the CLI's pipeline run and its stage sub-flows."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


@contextmanager
def without_flow_heartbeats() -> Iterator[None]:
    """Run the flows started inside this block without flow-run heartbeats.

    Heartbeats let Prefect mark a deployment's flow run as crashed when its process dies
    silently. Two kinds of run do not need their own: a stage sub-flow, which shares its
    parent's process (the parent still beats when it runs from a deployment), and a flow
    started in-process by ``mlops run``, which has no deployment and dies with the command.
    Prefect 3.8 joins each flow run's heartbeat thread at exit while that thread sleeps in
    1 s steps, so each of these runs would otherwise cost about 1 s more (measured in
    ``benchmarks/pipeline.py``: 1.09 s for an empty sub-flow, 0.11 s without a heartbeat).
    Flow runs started by workers from deployments keep their heartbeats.
    """
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
