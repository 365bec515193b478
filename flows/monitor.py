"""Drift monitor: recent serving traffic against the champion's training data; an event on drift."""

from __future__ import annotations

from typing import Any

from prefect import flow

from prefect_mlops.mlops.config import PipelineConfig, resolve_config
from prefect_mlops.mlops.drift_report import DriftReport
from prefect_mlops.tasks.monitoring import emit_drift_event, measure_drift, record_drift_report

DEFAULT_CONFIG = "configs/fraud_detection.yaml"


@flow(name="drift-monitor", log_prints=True, persist_result=True, result_serializer="json")
def drift_monitor_flow(config: PipelineConfig | str = DEFAULT_CONFIG) -> DriftReport:
    """Compare the inference log's recent window with the champion's training data.

    Per feature: PSI over binned values and the KS statistic (numeric), PSI over categories
    (categorical); and the distribution of the champion's predictions. Delayed labels, where
    they exist, give its metrics on real outcomes. When ``monitoring`` thresholds are crossed
    it emits ``mlops.model.drift-detected`` (or ``mlops.model.performance-degraded``) with the
    model as the resource: the retraining pipeline's deployment has a trigger on it. The report
    is an MLflow run (``drift-monitor-<status>``, with a plot per drifted feature) and the Prefect
    markdown artifact ``drift-<model>``.

    Args:
        config: The use case: a YAML path relative to the project (``configs/<name>.yaml``)
            or the whole config. It is passed on, as given, in the event's payload.
    """
    resolved = resolve_config(config)
    passed_on: str | dict[str, Any] = (
        config if isinstance(config, str) else resolved.model_dump(mode="json")
    )
    report = measure_drift(resolved)
    report = emit_drift_event(resolved, report, passed_on)
    report = record_drift_report(resolved, report)
    print(f"{report.status}: {report.reason}")
    return report
