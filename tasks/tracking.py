"""The pipeline's parent MLflow run and the lineage facts every stage tags its runs with."""

from __future__ import annotations

import subprocess
from contextlib import suppress
from functools import lru_cache
from typing import Any
from uuid import UUID

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.runtime import flow_run

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.loading import ModelStore, model_check_limits


def model_store(config: PipelineConfig) -> ModelStore:
    """Models of the config's tracking store, loaded natively."""
    client, _ = experiment_for(config)
    return ModelStore(client, tracking.tracking_uri_for(config), model_check_limits(get_settings()))


def experiment_for(config: PipelineConfig) -> tuple[MlflowClient, str]:
    """A tracking client and the id of the config's experiment (created if needed)."""
    client = tracking.tracking_client(config)
    experiment_id = tracking.ensure_experiment(
        client, config.experiment_name, get_settings().experiment_artifact_root
    )
    return client, experiment_id


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The checked-out commit of the working directory, or 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def lineage_tags(config: PipelineConfig) -> dict[str, str]:
    """Tags linking an MLflow run to its use case, Prefect flow run and code version."""
    return {
        "mlops.use_case": config.name,
        "prefect.flow_run_id": str(flow_run.id or "none"),
        "prefect.flow_run_name": str(flow_run.name or "none"),
        "prefect.flow_name": str(flow_run.flow_name or "none"),
        "git.commit": git_commit(),
    }


def ended_flow_runs(flow_run_ids: list[str]) -> set[str]:
    """Those of the flow runs that Prefect says are over (none when it cannot tell)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = []
    for flow_run_id in flow_run_ids:
        with suppress(ValueError):
            ids.append(UUID(flow_run_id))
    if not ids:
        return set()
    runs = []
    try:
        with get_client(sync_client=True) as client:
            for start in range(0, len(ids), 200):  # the API's largest page
                chunk = ids[start : start + 200]
                runs += client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
                )
    except Exception:  # another API, a server away: leave the runs alone
        return set()
    return {str(run.id) for run in runs if run.state is not None and run.state.is_final()}


@task(name="open-pipeline-run", retries=3, retry_delay_seconds=[2, 10, 30])
def open_pipeline_run(config: PipelineConfig) -> str:
    """Create the pipeline's parent MLflow run; stages nest their runs under it.

    First ends the runs that killed flow runs left RUNNING in the experiment. A try that fails
    after creating the run ends it FAILED, so retries never leave a run RUNNING.
    """
    client, experiment_id = experiment_for(config)
    tracking.close_abandoned_runs(client, experiment_id, ended_flow_runs)
    run_id = tracking.start_run(
        client, experiment_id, f"pipeline-{flow_run.name or 'local'}", tags=lineage_tags(config)
    )
    with tracking.closed_on_error(client, run_id):
        params = {"use_case": config.name, "model_name": config.model.name}
        tracking.log_params(client, run_id, params)
        tracking.log_json(client, run_id, config.model_dump(mode="json"), "config.json")
    return run_id


@task(name="close-pipeline-run", retries=3, retry_delay_seconds=[2, 10, 30])
def close_pipeline_run(
    config: PipelineConfig, run_id: str, summary: dict[str, Any] | None, error: str | None = None
) -> None:
    """Record the outcome on the parent run and end it FINISHED or FAILED."""
    client = tracking.tracking_client(config)
    if summary:
        metrics = {k: v for k, v in summary.items() if isinstance(v, float)}
        tracking.log_metrics(client, run_id, metrics)
        tracking.set_tags(
            client, run_id, {k: v for k, v in summary.items() if not isinstance(v, float)}
        )
    if error:
        tracking.set_tags(client, run_id, {"mlops.error": error[:5000]})
    client.set_terminated(run_id, status="FAILED" if error else "FINISHED")
