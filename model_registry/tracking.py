"""The one MLflow tracking helper: experiments, pipeline/stage runs, batched logging.

Functions take an explicit :class:`MlflowClient`. :func:`tracking_client` is the only place
that points MLflow's global state at a tracking URI (needed by ``log_model``/``log_input``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mlops.config import PipelineConfig
from mlops.settings import Settings, get_settings

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


def start_stage_run(
    client: MlflowClient,
    experiment_id: str,
    stage: str,
    parent_run_id: str | None,
    tags: Mapping[str, str],
) -> str:
    """A run named and tagged after a pipeline stage, nested under the pipeline's run if given."""
    return start_run(client, experiment_id, stage, parent_run_id, {**tags, "mlops.stage": stage})


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
