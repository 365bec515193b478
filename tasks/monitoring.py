"""The drift monitor's work: read recent traffic, compare it with the champion's training data, report.

The window is the inference log's rows of the last ``monitoring.window_hours`` (every version
the service answered with: inputs are inputs whichever model scored them); the prediction
distribution is compared on the rows the current champion scored, against its predictions on
its own test split. Delayed labels (files of ``request_id``, ``row``, ``label`` under
``<artifact store>/feedback/<model>/``) joined to the window give the champion's metrics on
real outcomes. A log or feedback file that cannot be read is skipped with a warning and listed
in the report; the monitor never fails on one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from prefect_mlops.mlops.config import MonitoringConfig, PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef, load_dataset_ref, read_split
from prefect_mlops.mlops.drift import ColumnDrift, feature_drift, prediction_drift
from prefect_mlops.mlops.drift_report import (
    DriftReport,
    PerformanceCheck,
    drift_figures,
    drift_markdown,
    drift_verdict,
    judge_performance,
    report_json,
)
from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.feedback import load_feedback
from prefect_mlops.mlops.gates import artifact_key
from prefect_mlops.mlops.settings import Settings, get_settings
from prefect_mlops.mlops.storage import artifact_store
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.loading import model_check_limits
from prefect_mlops.model_registry.registry import CHAMPION, version_by_alias
from prefect_mlops.serving.loader import ServedModel, load_served_model
from prefect_mlops.serving.log_reader import INPUT_PREFIX, InferenceWindow, load_inference_window
from prefect_mlops.serving.log_sinks import OUTPUT_PREFIX
from prefect_mlops.tasks.evaluation import compute_metrics, primary_metric
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

DRIFT_EVENT = "mlops.model.drift-detected"
DEGRADED_EVENT = "mlops.model.performance-degraded"


class MonitoringError(MlopsError):
    """The monitor cannot compare: the champion's training data is gone."""


@dataclass
class ChampionReference:
    """What the champion was trained on and how it predicts on its own test split."""

    version: str
    served: ServedModel
    features: pd.DataFrame
    predictions: pd.DataFrame
    test_metrics: dict[str, float]


# ---------------------------------------------------------------- the reference


def champion_dataset(client: MlflowClient, model: str) -> tuple[ModelVersion, DatasetRef] | None:
    """The champion's model version and the dataset it was trained on; None without a champion.

    Raises:
        MonitoringError: the champion's dataset is no longer in the artifact store.
    """
    champion = version_by_alias(client, model, CHAMPION)
    if champion is None:
        return None
    uri = champion.tags.get("data.uri")
    dataset = load_dataset_ref(uri) if uri else None
    if dataset is None:
        raise MonitoringError(
            f"The training data of {model} version {champion.version} "
            f"({uri or 'not tagged'}) is not in the artifact store; "
            "there is nothing to compare traffic with."
        )
    return champion, dataset


def champion_reference(
    client: MlflowClient, model: str, tracking_uri: str, config: MonitoringConfig
) -> ChampionReference | None:
    """The champion's training rows (sampled) and its predictions on its test split.

    Raises:
        MonitoringError: the champion's dataset is no longer in the artifact store.
    """
    found = champion_dataset(client, model)
    if found is None:
        return None
    champion, dataset = found
    version = str(champion.version)
    served = load_served_model(
        client, f"{model}/{version}", tracking_uri, model_check_limits(get_settings())
    )
    columns = served.spec.input_columns
    train = _sample(read_split(dataset, "train", columns=columns), config.max_reference_rows)
    test = _sample(read_split(dataset, "test", columns=columns), config.max_reference_rows)
    tests = {
        k.removeprefix("test_"): float(v) for k, v in champion.tags.items() if k.startswith("test_")
    }
    return ChampionReference(version, served, train, served.predict(test), tests)


def _sample(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    return frame.sample(rows, random_state=0) if len(frame) > rows else frame


# ---------------------------------------------------------------- comparing


def scored_column(task: str) -> str:
    """The prediction column whose distribution is watched."""
    return "probability" if task == "binary" else "prediction"


def compare_window(
    window: InferenceWindow,
    mine: pd.DataFrame,
    reference: ChampionReference,
    config: MonitoringConfig,
) -> tuple[list[ColumnDrift], list[str], ColumnDrift | None]:
    """Feature drift on every logged row, prediction drift on ``mine`` (the champion's rows)."""
    spec = reference.served.spec
    current = window.rows.rename(columns=lambda c: c.removeprefix(INPUT_PREFIX))
    compared = [c for c in [*spec.numeric, *spec.categorical] if c in current.columns]
    numeric = [c for c in spec.numeric if c in compared]
    categorical = [c for c in spec.categorical if c in compared]
    features = feature_drift(reference.features, current, numeric, categorical, config)
    not_compared = [f"{c} (datetime)" for c in spec.datetime] + [
        f"{c} (not in the log)" for c in [*spec.numeric, *spec.categorical] if c not in compared
    ]
    column = scored_column(reference.served.task)
    prediction = None
    if len(mine) >= config.min_rows and OUTPUT_PREFIX + column in mine.columns:
        expected = reference.predictions[column].rename(column)
        seen = mine[OUTPUT_PREFIX + column].rename(column)
        if pd.api.types.is_numeric_dtype(expected):
            seen = pd.to_numeric(seen, errors="coerce")
        prediction = prediction_drift(expected, seen, config)
    return features, not_compared, prediction


def performance_on_labels(
    mine: pd.DataFrame,
    labels: pd.DataFrame,
    reference: ChampionReference,
    config: MonitoringConfig,
) -> PerformanceCheck | None:
    """The champion's metrics on its rows of the window (``mine``) that have a delayed label."""
    served = reference.served
    metric = primary_metric(served.task)
    if labels.empty or mine.empty:
        return None
    joined = mine.assign(row=mine["row"].astype("int64")).merge(labels, on=["request_id", "row"])
    check = PerformanceCheck(labelled_rows=len(joined), metric=metric)
    check.champion_test_value = reference.test_metrics.get(metric)
    if len(joined) < config.min_labelled_rows:
        check.detail = f"{len(joined)} labelled rows; {config.min_labelled_rows} needed to judge"
        return check
    targets, scores = _targets_and_scores(joined, served)
    if targets is None:
        check.detail = "labels do not match the model's classes"
        return check
    check.metrics = compute_metrics(served.task, targets, scores, served.predictor.facts.threshold)
    check.value = check.metrics.get(metric)
    return judge_performance(check, config.max_metric_drop)


def _targets_and_scores(joined: pd.DataFrame, served: ServedModel):
    if served.task == "regression":
        targets = pd.to_numeric(joined["label"], errors="coerce").to_numpy("float64")
        return targets, joined[OUTPUT_PREFIX + "prediction"].to_numpy("float64")
    index = {label: i for i, label in enumerate(served.classes or [])}
    targets = joined["label"].map(index)
    if targets.isna().any():
        return None, None
    if served.task == "binary":
        return targets.to_numpy("int64"), joined[OUTPUT_PREFIX + "probability"].to_numpy("float64")
    columns = [f"{OUTPUT_PREFIX}probability_{label}" for label in served.classes]
    return targets.to_numpy("int64"), joined[columns].to_numpy("float64")


def compute_drift_report(
    config: PipelineConfig,
    settings: Settings,
    client: MlflowClient,
    tracking_uri: str,
    now: dt.datetime | None = None,
) -> DriftReport:
    """Everything the monitor compares, and its verdict (no side effects)."""
    monitoring, model = config.monitoring, config.model.name
    window = load_inference_window(settings, model, monitoring, now)
    labels, skipped_labels = load_feedback(artifact_store(settings).feedback_folder(model))
    versions = window.rows["version"].value_counts().to_dict() if len(window.rows) else {}
    report = DriftReport(
        model_name=model,
        champion_version=None,
        window_start=window.start.isoformat(timespec="seconds"),
        window_end=window.end.isoformat(timespec="seconds"),
        rows=len(window.rows),
        rows_by_version={str(k): int(v) for k, v in versions.items()},
        skipped_files=window.skipped + skipped_labels,
        status="no-champion",
        reason=f"{model} has no champion to compare with",
    )
    reference = champion_reference(client, model, tracking_uri, monitoring)
    if reference is None:
        return report
    report.champion_version = reference.version
    if len(window.rows) < monitoring.min_rows:
        report.status, report.reason = (
            "too-little-traffic",
            (
                f"{len(window.rows)} rows logged in the last {monitoring.window_hours:g} h; "
                f"at least {monitoring.min_rows} are needed to judge drift"
            ),
        )
        return report
    mine = window.rows[window.rows["version"] == reference.version]
    report.features, report.not_compared, report.prediction = compare_window(
        window, mine, reference, monitoring
    )
    report.performance = performance_on_labels(mine, labels, reference, monitoring)
    return drift_verdict(report, monitoring)


# ---------------------------------------------------------------- the event and its cooldown


def last_event(settings: Settings, model: str) -> dict[str, Any] | None:
    """The last event the monitor emitted for ``model`` (name and time), if any."""
    store = artifact_store(settings)
    fs, path = store.open(store.last_event_uri(model))
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "r") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def remember_event(settings: Settings, model: str, event: str, when: dt.datetime) -> None:
    """Record the event just emitted for ``model``: the cooldown counts from it."""
    store = artifact_store(settings)
    fs, path = store.open(store.last_event_uri(model))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        json.dump({"event": event, "emitted_at": when.isoformat()}, handle)


def event_to_emit(
    report: DriftReport, previous: dict[str, Any] | None, cooldown_minutes: float, now: dt.datetime
) -> tuple[str | None, str]:
    """Which event the report calls for, or None and why not (no drift, or in the cooldown)."""
    name = {"drift": DRIFT_EVENT, "degraded": DEGRADED_EVENT}.get(report.status)
    if name is None:
        return None, ""
    if previous is not None:
        emitted = dt.datetime.fromisoformat(previous["emitted_at"])
        if now - emitted < dt.timedelta(minutes=cooldown_minutes):
            return None, (
                f"Not emitted: `{previous['event']}` was emitted at "
                f"{emitted.isoformat(timespec='seconds')}, within the "
                f"{cooldown_minutes:g}-minute cooldown (monitoring.cooldown_minutes)."
            )
    return name, ""


# ---------------------------------------------------------------- the Prefect tasks


@task(name="measure-drift", cache_policy=NO_CACHE)
def measure_drift(config: PipelineConfig) -> DriftReport:
    """Compare the inference log's window with the champion's training data."""
    client, _ = experiment_for(config)
    report = compute_drift_report(config, get_settings(), client, tracking.tracking_uri_for(config))
    for line in report.skipped_files:
        logger.warning("Skipped %s", line)
    logger.info("%s: %s", report.status, report.reason)
    return report


@task(name="emit-drift-event", cache_policy=NO_CACHE)
def emit_drift_event(
    config: PipelineConfig, report: DriftReport, trigger_config: str | dict[str, Any]
) -> DriftReport:
    """Emit ``mlops.model.drift-detected`` (or ``performance-degraded``) unless in the cooldown.

    The event's resource is the model (``mlops.model.<name>``); its payload carries the use
    case as the pipeline's ``config`` parameter, so the retraining trigger passes it on.
    """
    from prefect.events import emit_event

    settings, model, now = get_settings(), config.model.name, dt.datetime.now(dt.UTC)
    name, note = event_to_emit(
        report, last_event(settings, model), config.monitoring.cooldown_minutes, now
    )
    if name is None:
        return report.model_copy(update={"event_note": note})
    emitted = emit_event(
        event=name,
        resource={
            "prefect.resource.id": f"mlops.model.{model}",
            "prefect.resource.name": model,
            "mlops.model.version": report.champion_version or "",
        },
        payload={
            "config": trigger_config,
            "status": report.status,
            "reason": report.reason,
            "drifted_features": report.drifted_features,
            "rows": report.rows,
        },
    )
    if emitted is None:
        note = "Not emitted: no Prefect server to emit to (PREFECT_API_URL is not set)."
        logger.warning(note)
        return report.model_copy(update={"event_note": note})
    remember_event(settings, model, name, now)
    logger.warning("Emitted %s for %s: %s", name, model, report.reason)
    return report.model_copy(update={"event": name, "event_note": f"Event id {emitted.id}."})


@task(name="record-drift-report", cache_policy=NO_CACHE)
def record_drift_report(config: PipelineConfig, report: DriftReport) -> DriftReport:
    """A ``drift-monitor`` MLflow run (metrics, report, plots) and the Prefect markdown artifact."""
    client, experiment_id = experiment_for(config)
    tags = lineage_tags(config) | {
        "drift.status": report.status,
        "model.name": report.model_name,
        "model.version": report.champion_version or "none",
    }
    name = f"drift-monitor-{report.status}"
    with tracking.stage_run(client, experiment_id, "drift-monitor", None, tags, name) as run:
        run_id = run.run_id
        report = report.model_copy(update={"mlflow_run_id": run_id})
        metrics = {"rows": report.rows, "drifted_features": len(report.drifted_features)}
        metrics |= {f"psi.{_slug(d.column)}": d.psi for d in report.features}
        if report.prediction is not None:
            metrics["psi.prediction"] = report.prediction.psi
        if report.performance is not None:
            metrics |= {f"labelled.{k}": v for k, v in report.performance.metrics.items()}
        tracking.log_metrics(client, run_id, metrics)
        tracking.log_json(client, run_id, report_json(report), "drift_report.json")
        tracking.log_figures(client, run_id, drift_figures(report), folder="drift")
        markdown = drift_markdown(report)
        client.log_text(run_id, markdown, "drift_report.md")
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key("drift", report.model_name),
        description=f"Drift monitor of {report.model_name}: {report.status}",
    )
    return report


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
