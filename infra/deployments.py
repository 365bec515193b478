"""Triggering a deployment from outside Prefect and following its run and its stage runs."""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import FlowRunSort
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from prefect_mlops.mlops.errors import MlopsError


class DeploymentNotFound(MlopsError):
    """The named deployment does not exist on the Prefect server."""


def trigger(deployment: str, parameters: dict[str, Any] | None = None) -> FlowRun:
    """Create a run of ``deployment`` now and return it without waiting.

    Raises:
        DeploymentNotFound: naming the deployment and how to create it.
    """
    try:
        return run_deployment(deployment, parameters=parameters or {}, timeout=0)
    except ObjectNotFound:
        raise DeploymentNotFound(
            f"Deployment '{deployment}' not found on the Prefect server. Deploy the project "
            "first: `mlops up` does it locally, `prefect deploy --all` against another server."
        ) from None


@dataclass(frozen=True)
class RunEvent:
    """A run (the pipeline's or a stage's) that entered a new state."""

    run: FlowRun
    flow_name: str
    elapsed_s: float

    @property
    def state_name(self) -> str:
        return self.run.state.name if self.run.state else "Unknown"


def follow(
    flow_run_id: UUID,
    on_event: Callable[[RunEvent], None],
    timeout_s: float | None = None,
    poll_s: float = 2.0,
) -> FlowRun:
    """Poll a run and its child runs, reporting each state change, until the run is final.

    Returns:
        The run in its final state, or as it is when ``timeout_s`` runs out.
    """
    started = time.monotonic()
    seen: dict[UUID, str] = {}
    flow_names: dict[UUID, str] = {}
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            for item in [run, *children]:
                state = item.state.name if item.state else "Unknown"
                if seen.get(item.id) != state:
                    seen[item.id] = state
                    if item.flow_id not in flow_names:
                        flow_names[item.flow_id] = client.read_flow(item.flow_id).name
                    on_event(RunEvent(item, flow_names[item.flow_id], time.monotonic() - started))
            if run.state is not None and run.state.is_final():
                return run
            if timeout_s is not None and time.monotonic() - started > timeout_s:
                return run
            time.sleep(poll_s)


def wait_for_triggered_run(
    deployment: str, after: datetime.datetime, timeout_s: float = 60, poll_s: float = 2.0
) -> FlowRun | None:
    """The first run of ``deployment`` created after ``after`` (an automation's), or None."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        target = client.read_deployment_by_name(deployment)
        while True:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id={"any_": [target.id]}),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=10,
            )
            fresh = sorted(
                (r for r in runs if r.created and r.created > after), key=lambda r: r.created
            )
            if fresh:
                return fresh[0]
            if time.monotonic() > deadline:
                return None
            time.sleep(poll_s)
