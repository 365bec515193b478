"""The one MLflow tracking helper: experiments, pipeline/stage runs, batched logging.

Functions take an explicit :class:`MlflowClient`. :func:`tracking_client` is the only place
that points MLflow's global state at a tracking URI (needed by ``log_model``/``log_input``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.settings import Settings, get_settings

logger = logging.getLogger(__name__)

_BATCH = 1000  # MLflow accepts at most 1000 metrics per log_batch call
_PARAM_BATCH = 100  # and at most 100 params or tags


def tracking_uri_for(config: PipelineConfig, settings: Settings | None = None) -> str:
    """The tracking URI: the config's, else ``MLFLOW_TRACKING_URI``, else SQLite under .mlops."""
    settings = settings or get_settings()
    return config.tracking.tracking_uri or settings.resolved_tracking_uri


def tracking_client(config: PipelineConfig, settings: Settings | None = None) -> MlflowClient:
    """A client for the config's tracking server; also sets MLflow's global URI for this process."""
    settings = settings or get_settings()
    uri = tracking_uri_for(config, settings)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The id of experiment ``name``, created with its artifacts under ``artifact_root``.

    With no ``artifact_root`` the tracking server's default artifact location is used.
    """
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = f"{artifact_root}/{name}" if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def start_run(
    client: MlflowClient,
    experiment_id: str,
    run_name: str,
    parent_run_id: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run (nested under ``parent_run_id`` if given) and return its id."""
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


@dataclass
class OpenRun:
    """A run opened by :func:`stage_run`; set ``status`` to ``FAILED`` for a failed outcome."""

    run_id: str
    status: str = "FINISHED"


@contextmanager
def stage_run(
    client: MlflowClient,
    experiment_id: str,
    stage: str,
    parent_run_id: str | None,
    tags: Mapping[str, str],
    run_name: str | None = None,
) -> Iterator[OpenRun]:
    """A run named (unless ``run_name``) and tagged after a pipeline stage, closed whatever happens.

    Nested under the pipeline's run if ``parent_run_id`` is given. The run ends with the
    block's ``status`` (``FINISHED`` unless the block sets another); an exception ends it
    ``FAILED`` (``KILLED`` for a cancellation or interrupt) with the error as the tag
    ``mlops.error``, and propagates. So a stage that fails or is retried halfway never leaves
    a run RUNNING.
    """
    all_tags = {**tags, "mlops.stage": stage}
    run = OpenRun(start_run(client, experiment_id, run_name or stage, parent_run_id, all_tags))
    with closed_on_error(client, run.run_id):
        yield run
    client.set_terminated(run.run_id, status=run.status)


@contextmanager
def closed_on_error(client: MlflowClient, run_id: str) -> Iterator[None]:
    """End ``run_id`` if the block raises (then re-raise); leave it open when the block succeeds.

    For a run that outlives the block, e.g. the pipeline's parent run while its stages run.
    """
    try:
        yield
    except BaseException as error:
        end_failed_run(client, run_id, error)
        raise


def end_failed_run(client: MlflowClient, run_id: str, error: BaseException) -> None:
    """Mark a run ``FAILED`` (``KILLED`` when interrupted or cancelled) with the error as a tag.

    Never raises: it runs while another error propagates, possibly one of the tracking
    server's own, and must not replace it.
    """
    status = "FAILED" if isinstance(error, Exception) else "KILLED"
    try:
        client.set_tag(run_id, "mlops.error", f"{type(error).__name__}: {error}"[:5000])
        client.set_terminated(run_id, status=status)
    except Exception as closing:  # the original error is the one to report
        logger.warning("Could not mark MLflow run %s %s: %s", run_id, status, closing)


ABANDONED_TAG = "mlops.abandoned"


def close_abandoned_runs(
    client: MlflowClient, experiment_id: str, ended: Callable[[list[str]], set[str]]
) -> list[str]:
    """End ``KILLED`` the RUNNING runs whose Prefect flow run is over (a process that was killed).

    A flow-run process killed outright (SIGKILL, a lost node) runs no cleanup, so its MLflow
    runs stay RUNNING. Each run carries its flow run's id (tag ``prefect.flow_run_id``);
    ``ended`` answers, for a list of ids, which flow runs have ended (the caller asks Prefect).
    Each run it ends gets the tag ``mlops.abandoned``, which stays if the run is closed later.

    Returns:
        The ids of the runs it ended.
    """
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=500
    )
    flow_runs = {run.info.run_id: run.data.tags.get("prefect.flow_run_id") for run in running}
    over = ended(sorted({f for f in flow_runs.values() if f and f != "none"}))
    closed = [run_id for run_id, flow_run in flow_runs.items() if flow_run in over]
    for run_id in closed:
        client.set_tag(run_id, ABANDONED_TAG, "its flow run ended without closing this run")
        client.set_terminated(run_id, status="KILLED")
    if closed:
        logger.warning("Ended %d abandoned MLflow run(s) KILLED: %s", len(closed), closed)
    return closed


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log parameters in batches, values stringified (MLflow's 6000-char limit applies)."""
    items = [Param(str(k), str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, params=items[start : start + _PARAM_BATCH])


def log_metrics(
    client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0
) -> None:
    """Log scalar metrics, 1000 per call."""
    stamp = _now_ms()
    points = [Metric(k, float(v), stamp, step) for k, v in metrics.items()]
    for start in range(0, len(points), _BATCH):
        client.log_batch(run_id, metrics=points[start : start + _BATCH])


def log_metric_history(
    client: MlflowClient, run_id: str, key: str, values: Sequence[float]
) -> None:
    """Log one value per step (e.g. per boosting iteration), 1000 points per call."""
    stamp = _now_ms()
    points = [Metric(key, float(v), stamp, step) for step, v in enumerate(values)]
    for start in range(0, len(points), _BATCH):
        client.log_batch(run_id, metrics=points[start : start + _BATCH])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set run tags, 100 per call (MLflow's batch limit)."""
    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for start in range(0, len(items), _PARAM_BATCH):
        client.log_batch(run_id, tags=items[start : start + _PARAM_BATCH])


def log_json(client: MlflowClient, run_id: str, payload: Any, artifact_file: str) -> None:
    """Store a JSON document as a run artifact."""
    client.log_text(run_id, json.dumps(payload, indent=2, default=str), artifact_file)


def log_figures(
    client: MlflowClient, run_id: str, figures: Mapping[str, Any], folder: str = "plots"
) -> None:
    """Save matplotlib figures as PNG artifacts under ``folder/`` and close them."""
    import matplotlib.pyplot as plt

    for name, figure in figures.items():
        client.log_figure(run_id, figure, f"{folder}/{name}.png")
        plt.close(figure)


def _now_ms() -> int:
    return int(time.time() * 1000)


def artifact_url(client: MlflowClient, run_id: str, path: str) -> str:
    """Where a person can open a run's artifact: a file URL for a local store, else the run page."""
    run = client.get_run(run_id)
    root = run.info.artifact_uri.rstrip("/")
    if root.startswith("file:") or root.startswith("/"):
        return f"{root}/{path}"
    tracking_uri = client.tracking_uri
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}/artifacts/{path}"
    return f"{root}/{path}"
