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
from typing import Any, Literal

import fsspec
import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from mlops.config import MonitoringConfig, PipelineConfig
from mlops.dataset import DatasetRef
from mlops.drift import ColumnDrift, feature_drift, prediction_drift
from mlops.errors import MlopsError
from mlops.gates import artifact_key
from mlops.settings import Settings, get_settings
from model_registry import tracking
from model_registry.registry import CHAMPION, version_by_alias
from serving.inference_log import (
    INPUT_PREFIX,
    META_COLUMNS,
    OUTPUT_PREFIX,
    REQUEST_COLUMNS,
    TABLE_NAME,
    expand_requests,
    inference_log_table,
)
from serving.loader import ServedModel, load_served_model
from tasks.evaluation import compute_metrics, primary_metric
from tasks.preprocessing import load_dataset_ref, read_split
from tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

DRIFT_EVENT = "mlops.model.drift-detected"
DEGRADED_EVENT = "mlops.model.performance-degraded"
Status = Literal["drift", "degraded", "no-drift", "too-little-traffic", "no-champion"]


class MonitoringError(MlopsError):
    """The monitor cannot compare: the champion's training data is gone."""


class PerformanceCheck(BaseModel):
    """The champion on delayed labels: its metrics on real outcomes vs. on its test split."""

    labelled_rows: int
    metric: str
    value: float | None = None
    champion_test_value: float | None = None
    degraded: bool = False
    detail: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)


class DriftReport(BaseModel):
    """One run of the drift monitor: what was compared, the verdict, and what was done about it."""

    model_name: str
    champion_version: str | None
    window_start: str
    window_end: str
    rows: int
    rows_by_version: dict[str, int] = Field(default_factory=dict)
    skipped_files: list[str] = Field(default_factory=list)
    status: Status
    reason: str
    features: list[ColumnDrift] = Field(default_factory=list)
    not_compared: list[str] = Field(default_factory=list)
    prediction: ColumnDrift | None = None
    performance: PerformanceCheck | None = None
    event: str | None = None
    event_note: str = ""
    mlflow_run_id: str | None = None

    @property
    def drifted_features(self) -> list[str]:
        return [f.column for f in self.features if f.drifted]


@dataclass
class InferenceWindow:
    """The logged rows of the window (metadata, ``input.*`` and ``output.*`` columns)."""

    rows: pd.DataFrame
    skipped: list[str]
    start: dt.datetime
    end: dt.datetime


@dataclass
class ChampionReference:
    """What the champion was trained on and how it predicts on its own test split."""

    version: str
    served: ServedModel
    features: pd.DataFrame
    predictions: pd.DataFrame
    test_metrics: dict[str, float]


# ---------------------------------------------------------------- reading the inference log


def log_files(root: str, model: str, start: dt.datetime) -> list[str]:
    """Parquet files of ``model`` in date partitions from ``start``'s day on."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{model}")
    if not fs.exists(path):
        return []
    first = f"date={start.date().isoformat()}"
    found = []
    for folder in sorted(fs.ls(path, detail=False)):
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith("date=") and name >= first:
            found += sorted(f for f in fs.ls(folder, detail=False) if f.endswith(".parquet"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [f if protocol == "file" else f"{protocol}://{f}" for f in found]


def read_log_file(uri: str, start: dt.datetime) -> pd.DataFrame:
    """The scored rows of one inference-log file logged since ``start``.

    Raises:
        ValueError: it is not a complete inference-log file (unreadable, columns missing, or
            a body that does not parse).
    """
    try:
        with fsspec.open(uri, "rb") as handle:
            requests = pq.read_table(handle).to_pandas()
    except Exception as error:  # truncated or foreign files: pyarrow raises many kinds
        raise ValueError(f"not a readable Parquet file ({type(error).__name__}: {error})") from None
    missing = [c for c in REQUEST_COLUMNS if c not in requests.columns]
    if missing:
        raise ValueError(f"not an inference-log file: columns {missing} are missing")
    recent = requests[pd.to_datetime(requests["logged_at"], utc=True) >= start]
    return expand_requests(recent.reset_index(drop=True))


def load_parquet_window(
    root: str, model: str, start: dt.datetime
) -> tuple[pd.DataFrame, list[str]]:
    """The scored rows logged since ``start``, and a line per file skipped."""
    frames, skipped = [], []
    for uri in log_files(root, model, start):
        try:
            frames.append(read_log_file(uri, start))
        except ValueError as error:
            logger.warning("Skipping inference-log file %s: %s", uri, error)
            skipped.append(f"{uri}: {error}")
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=META_COLUMNS)
    return rows, skipped


def load_sql_window(url: str, model: str, start: dt.datetime) -> pd.DataFrame:
    """The scored rows logged since ``start`` in the SQL inference log."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    table = inference_log_table(sa.MetaData())
    naive_start = start.astimezone(dt.UTC).replace(tzinfo=None)
    query = sa.select(table).where(table.c.model == model, table.c.logged_at >= naive_start)
    try:
        if not sa.inspect(engine).has_table(TABLE_NAME):  # nothing logged yet
            return pd.DataFrame(columns=META_COLUMNS)
        with engine.connect() as connection:
            records = connection.execute(query).mappings().all()
    finally:
        engine.dispose()
    if not records:
        return pd.DataFrame(columns=META_COLUMNS)
    requests = pd.DataFrame([{c: r[c] for c in REQUEST_COLUMNS} for r in records])
    requests["body"] = requests["body"].str.encode("utf-8")
    requests["logged_at"] = pd.to_datetime(requests["logged_at"]).dt.tz_localize("UTC")
    outputs = pd.DataFrame([orjson.loads(r["outputs"]) for r in records])
    return expand_requests(pd.concat([requests, outputs.add_prefix(OUTPUT_PREFIX)], axis=1))


def load_inference_window(
    settings: Settings, model: str, config: MonitoringConfig, now: dt.datetime | None = None
) -> InferenceWindow:
    """The rows the serving instances logged for ``model`` in the configured window."""
    end = now or dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(hours=config.window_hours)
    if settings.inference_log == "sql" and settings.inference_log_url:
        return InferenceWindow(
            load_sql_window(settings.inference_log_url, model, start), [], start, end
        )
    rows, skipped = load_parquet_window(settings.inference_log_root, model, start)
    return InferenceWindow(rows, skipped, start, end)


# ---------------------------------------------------------------- delayed labels


def load_feedback(root: str, model: str) -> tuple[pd.DataFrame, list[str]]:
    """Delayed labels of ``model``: ``request_id``, ``row`` (0 when absent), ``label`` as text."""
    fs, path = fsspec.core.url_to_fs(f"{root.rstrip('/')}/{model}")
    files = (
        sorted(fs.glob(f"{path}/*.csv") + fs.glob(f"{path}/*.parquet")) if fs.exists(path) else []
    )
    frames, skipped = [], []
    for file in files:
        try:
            with fs.open(file, "rb") as handle:
                frame = (
                    pd.read_csv(handle, dtype=str)
                    if file.endswith(".csv")
                    else pd.read_parquet(handle).astype("string")
                )
            missing = [c for c in ("request_id", "label") if c not in frame.columns]
            if missing:
                raise ValueError(f"columns {missing} are missing")
        except Exception as error:
            logger.warning("Skipping feedback file %s: %s", file, error)
            skipped.append(f"{file}: {error}")
            continue
        if "row" not in frame.columns:
            frame["row"] = "0"
        frames.append(frame[["request_id", "row", "label"]])
    if not frames:
        return pd.DataFrame(columns=["request_id", "row", "label"]), skipped
    labels = pd.concat(frames, ignore_index=True).dropna(subset=["request_id", "label"])
    labels["row"] = pd.to_numeric(labels["row"], errors="coerce").fillna(0).astype("int64")
    return labels.drop_duplicates(["request_id", "row"], keep="last"), skipped


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
        client, f"{model}/{version}", tracking_uri, get_settings().model_check
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
    check.metrics = compute_metrics(served.task, targets, scores)
    check.value = check.metrics.get(metric)
    return _judge_performance(check, config.max_metric_drop)


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


def _judge_performance(check: PerformanceCheck, max_drop: float) -> PerformanceCheck:
    if check.value is None or check.champion_test_value is None:
        check.detail = f"{check.metric} could not be computed on the labelled rows"
        return check
    lower_is_better = check.metric in {"rmse", "mae", "log_loss"}
    base = check.champion_test_value
    bound = base * (1 + max_drop) if lower_is_better else base * (1 - max_drop)
    check.degraded = check.value > bound if lower_is_better else check.value < bound
    relation = "above" if lower_is_better else "below"
    check.detail = (
        f"{check.metric} {check.value:.4f} on {check.labelled_rows} labelled rows vs "
        f"{base:.4f} on the test split"
        + (f": more than {max_drop:.0%} {relation} it" if check.degraded else "")
    )
    return check


def drift_verdict(report: DriftReport, config: MonitoringConfig) -> DriftReport:
    """The report's status and reason from its comparisons."""
    drifted = report.drifted_features
    prediction = report.prediction is not None and report.prediction.drifted
    if len(drifted) >= config.min_drifted_features or prediction:
        parts = [
            f"{len(drifted)} of {len(report.features)} features drifted ({', '.join(drifted)})"
        ]
        if prediction:
            parts.append(f"the prediction distribution drifted ({report.prediction.reason})")
        return report.model_copy(update={"status": "drift", "reason": "; ".join(parts)})
    if report.performance is not None and report.performance.degraded:
        return report.model_copy(
            update={
                "status": "degraded",
                "reason": f"performance degraded: {report.performance.detail}",
            }
        )
    return report.model_copy(
        update={
            "status": "no-drift",
            "reason": f"no drift: {len(drifted)} of {len(report.features)} features drifted "
            f"(at least {config.min_drifted_features} needed)",
        }
    )


def measure_drift(
    config: PipelineConfig,
    settings: Settings,
    client: MlflowClient,
    tracking_uri: str,
    now: dt.datetime | None = None,
) -> DriftReport:
    """Everything the monitor compares, and its verdict (no side effects)."""
    monitoring, model = config.monitoring, config.model.name
    window = load_inference_window(settings, model, monitoring, now)
    labels, skipped_labels = load_feedback(settings.feedback_root, model)
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


# ---------------------------------------------------------------- the report


def drift_markdown(report: DriftReport) -> str:
    """The Prefect artifact and ``drift_report.md``: the verdict, then every comparison."""
    lines = [
        f"# Drift monitor: {report.model_name} (champion {report.champion_version or 'none'}) "
        f"— **{report.status}**",
        "",
        report.reason,
        "",
        f"Window {report.window_start} to {report.window_end}: {report.rows} logged rows "
        f"({', '.join(f'version {v}: {n}' for v, n in report.rows_by_version.items()) or 'none'}).",
    ]
    if report.event or report.event_note:
        lines += [
            "",
            f"Event: `{report.event}` emitted. {report.event_note}".strip()
            if report.event
            else report.event_note,
        ]
    if report.features:
        lines += [
            "",
            "| feature | kind | PSI | KS | verdict |",
            "|---|---|---:|---:|---|",
            *(
                _drift_row(d)
                for d in [*report.features, *([report.prediction] if report.prediction else [])]
            ),
        ]
    if report.not_compared:
        lines += ["", f"Not compared: {', '.join(report.not_compared)}."]
    if report.performance is not None:
        lines += [
            "",
            f"Delayed labels: {report.performance.detail or report.performance.labelled_rows}.",
        ]
    if report.skipped_files:
        lines += ["", "Skipped files (unreadable or not inference-log files):", ""]
        lines += [f"- {line}" for line in report.skipped_files]
    return "\n".join(lines) + "\n"


def _drift_row(drift: ColumnDrift) -> str:
    ks = "-" if drift.ks_statistic is None else f"{drift.ks_statistic:.3f}"
    verdict = f"**drift**: {drift.reason}" if drift.drifted else "stable"
    return f"| {drift.column} | {drift.kind} | {drift.psi:.3f} | {ks} | {verdict} |"


def drift_figures(report: DriftReport) -> dict[str, Any]:
    """A bar chart of reference vs. recent shares per drifted feature, and the predictions'."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [d for d in report.features if d.drifted]
    if report.prediction is not None:
        shown.append(report.prediction)
    figures = {}
    for drift in shown:
        figure, axes = plt.subplots(figsize=(8, 4))
        positions = np.arange(len(drift.bins))
        axes.bar(positions - 0.2, drift.reference_shares, 0.4, label="training reference")
        axes.bar(positions + 0.2, drift.current_shares, 0.4, label="recent traffic")
        axes.set_xticks(positions, drift.bins, rotation=45, ha="right", fontsize=7)
        axes.set_ylabel("share of rows")
        axes.set_title(
            f"{drift.column}: PSI {drift.psi:.3f}"
            + (f", KS {drift.ks_statistic:.3f}" if drift.ks_statistic is not None else "")
        )
        axes.legend()
        figure.tight_layout()
        slug = "".join(ch if ch.isalnum() else "_" for ch in drift.column).strip("_")
        figures[f"drift_{slug}"] = figure
    return figures


def report_json(report: DriftReport) -> dict[str, Any]:
    """The report as plain JSON (what the MLflow artifact and the event payload hold)."""
    return json.loads(report.model_dump_json())


# ---------------------------------------------------------------- the event and its cooldown


def cooldown_path(settings: Settings, model: str) -> str:
    return f"{settings.resolved_artifact_store.rstrip('/')}/monitoring/{model}/last-event.json"


def last_event(settings: Settings, model: str) -> dict[str, Any] | None:
    """The last event the monitor emitted for ``model`` (name and time), if any."""
    fs, path = fsspec.core.url_to_fs(cooldown_path(settings, model))
    if not fs.exists(path):
        return None
    try:
        with fs.open(path, "r") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def remember_event(settings: Settings, model: str, event: str, when: dt.datetime) -> None:
    fs, path = fsspec.core.url_to_fs(cooldown_path(settings, model))
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
def measure_drift_task(config: PipelineConfig) -> DriftReport:
    """Compare the inference log's window with the champion's training data."""
    client, _ = experiment_for(config)
    report = measure_drift(config, get_settings(), client, tracking.tracking_uri_for(config))
    for line in report.skipped_files:
        logger.warning("Skipped %s", line)
    logger.info("%s: %s", report.status, report.reason)
    return report


@task(name="emit-drift-event", cache_policy=NO_CACHE)
def emit_drift_event_task(
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
def record_drift_task(config: PipelineConfig, report: DriftReport) -> DriftReport:
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
