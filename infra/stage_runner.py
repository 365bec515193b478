"""How the retraining pipeline runs a stage: in its own process, or as a run of the stage's deployment.

``MLOPS_STAGE_RUNNER=in-process`` (the default, used by ``mlops run`` and the tests) calls each
stage flow as a sub-flow of the pipeline. ``MLOPS_STAGE_RUNNER=deployments`` (set for the
pipeline's deployment in ``prefect.yaml``) starts a run of the stage's deployment, which a worker
on the stage's own work pool picks up, and waits for it. Either way the stage's flow run is a
child of the pipeline's run in the Prefect UI, and what a stage hands to the next one is a small
typed reference that its flow persists as JSON (``persist_result=True``), never data.

A deployment is looked up as ``<flow name>/<flow name>``: each stage's deployment in
``prefect.yaml`` is named after its flow.
"""

from __future__ import annotations

import logging
import time
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints
from uuid import UUID

import httpx
from prefect import Flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Cancelled, State
from pydantic import TypeAdapter

from prefect_mlops.infra.prefect_runtime import without_flow_heartbeats
from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class StageFailed(MlopsError):
    """A stage's flow run ended Failed, Crashed or Cancelled, or no worker ever started it."""

    exit_code = 1


def run_stage(stage: Flow, *, deployment: str | None = None, **parameters: Any) -> Any:
    """Run one stage and return what it returned.

    Raises:
        MlopsError: the stage's own error (bad data, a conflict) when it can be read back.
        StageFailed: the stage crashed, was cancelled, or failed with an error of another kind.
    """
    state = run_stage_for_state(stage, deployment=deployment, **parameters)
    return stage_output(state, stage.name, declared_output(stage))


def declared_output(stage: Flow) -> Any:
    """The return annotation of a stage flow, without ``State`` (a stage may return one)."""
    declared = get_type_hints(stage.fn).get("return")
    if get_origin(declared) in (Union, UnionType):
        kept = [t for t in get_args(declared) if not (isinstance(t, type) and issubclass(t, State))]
        return Union[tuple(kept)] if len(kept) > 1 else kept[0]  # noqa: UP007 - built at run time
    return declared


def as_declared(value: Any, output_type: Any) -> Any:
    """``value`` validated into ``output_type`` when it came back as plain JSON data."""
    if output_type is None or output_type is type(None) or value is None:
        return value
    return TypeAdapter(output_type).validate_python(value)


def run_stage_for_state(stage: Flow, *, deployment: str | None = None, **parameters: Any) -> State:
    """Run one stage and return its final state, whatever it is.

    ``deployment`` picks another deployment of the stage's flow than the one named after it
    (the allocator's GPU choice runs ``train/train-gpu``); it only matters with deployments.
    """
    settings = get_settings()
    if settings.stage_runner == "deployments":
        return _run_as_deployment(stage.name, parameters, settings, deployment or stage.name)
    with without_flow_heartbeats():  # a sub-flow shares the pipeline's process and heartbeat
        return stage(**parameters, return_state=True)


def stage_output(state: State, stage_name: str, output_type: Any = None) -> Any:
    """The return value of a completed stage; for any other state, raise what stopped it.

    Args:
        state: The stage run's final state.
        stage_name: For messages.
        output_type: What the stage returns; a result read back from storage is validated
            into it (Prefect 3.8 hands a JSON-persisted model back as a plain dict).
    """
    if state.is_completed():
        return as_declared(state.result(), output_type)
    try:
        state.result()  # re-raises the stage's own exception where it was recorded
    except MlopsError:
        raise
    except Exception as error:  # reported below, with the stage and its state
        cause = f"{type(error).__name__}: {error}"
    else:
        cause = state.message or "no message"
    raise StageFailed(f"Stage '{stage_name}' ended {state.name}: {cause}")


def _run_as_deployment(
    name: str, parameters: dict[str, Any], settings: Settings, deployment: str
) -> State:
    flow_run = run_deployment(
        f"{name}/{deployment}", parameters=parameters, timeout=0, as_subflow=True
    )
    logger.info(
        "Stage %s: flow run '%s' queued on work pool '%s'",
        name,
        flow_run.name,
        flow_run.work_pool_name,
    )
    final = _wait_for_stage(flow_run, name, settings)
    _mirror_on_parent_task(final)
    logger.info("Stage %s: flow run '%s' %s", name, final.name, final.state.name)
    return final.state


def _wait_for_stage(flow_run: FlowRun, name: str, settings: Settings) -> FlowRun:
    """Poll the stage's flow run until it is final; cancel it if no worker starts it in time."""
    queued_at = time.monotonic()
    started = False
    with get_client(sync_client=True) as client:
        while True:
            flow_run = _read_through_outage(client, flow_run, name, settings)
            state = flow_run.state
            if state is not None and state.is_final():
                return flow_run
            started = started or (state is not None and state.type == StateType.RUNNING)
            waited = time.monotonic() - queued_at
            if not started and waited > settings.stage_start_timeout_s:
                message = (
                    f"Stage '{name}' was not started by any worker on work pool "
                    f"'{flow_run.work_pool_name}' within {settings.stage_start_timeout_s:.0f} s. "
                    "Start a worker for that pool (`mlops up` starts one per pool; "
                    "`mlops status` shows them), then trigger the pipeline again."
                )
                client.set_flow_run_state(flow_run.id, Cancelled(message=message), force=True)
                raise StageFailed(message)
            time.sleep(settings.stage_poll_s)


def _read_through_outage(client: Any, flow_run: FlowRun, name: str, settings: Settings) -> FlowRun:
    """The stage's flow run as the API has it now, waiting out an outage of the API.

    The stage keeps running on its worker while the Prefect server restarts; the pipeline
    only has to keep asking. Each call first spends the Prefect client's own retries (about
    half a minute); beyond those the pipeline keeps asking for up to ``settings.api_outage_s``.
    Only this wait rides out an outage: the pipeline's other calls to the API do not.

    Raises:
        StageFailed: when the API stays unreachable longer than that.
    """
    down_since: float | None = None
    while True:
        try:
            return client.read_flow_run(flow_run.id)
        except (httpx.TransportError, PrefectHTTPStatusError) as error:
            if isinstance(error, PrefectHTTPStatusError) and error.response.status_code < 500:
                raise
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > settings.api_outage_s:
                raise StageFailed(
                    f"The Prefect API was unreachable for {now - down_since:.0f} s while stage "
                    f"'{name}' (flow run '{flow_run.name}') ran: {type(error).__name__}: {error}. "
                    "The stage's own run may still finish; check it in the Prefect UI. "
                    "Raise MLOPS_API_OUTAGE_S to wait longer."
                ) from error
            logger.warning(
                "Prefect API unreachable for %.0f s (%s); still waiting for stage %s",
                now - down_since,
                type(error).__name__,
                name,
            )
            time.sleep(min(5.0, settings.stage_poll_s * 5))


def _mirror_on_parent_task(flow_run: FlowRun) -> None:
    """Give the pipeline's placeholder task for this stage the stage's final state.

    ``run_deployment`` links the stage's run to the pipeline through a task run that it leaves
    Pending; without this the pipeline's task list would show every finished stage as pending.
    """
    task_run_id: UUID | None = flow_run.parent_task_run_id
    if task_run_id is None or flow_run.state is None:
        return
    mirrored = State(
        type=flow_run.state.type, name=flow_run.state.name, message=flow_run.state.message
    )
    with get_client(sync_client=True) as client:
        client.set_task_run_state(task_run_id, mirrored, force=True)
