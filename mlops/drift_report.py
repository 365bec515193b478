"""The drift monitor's report: what was compared, the verdict, and how it reads.

Pure: the models, the verdict from the comparisons (:mod:`mlops.drift`), and the report as
markdown, figures and JSON. Reading traffic and the champion's data is the monitor's
(:mod:`tasks.monitoring`).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from prefect_mlops.mlops.config import MonitoringConfig
from prefect_mlops.mlops.drift import ColumnDrift

Status = Literal["drift", "degraded", "no-drift", "too-little-traffic", "no-champion"]


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
        """The names of the features that drifted."""
        return [f.column for f in self.features if f.drifted]


# ---------------------------------------------------------------- the verdict


def judge_performance(check: PerformanceCheck, max_drop: float) -> PerformanceCheck:
    """The check with its verdict: degraded when the metric is more than ``max_drop`` (relative)
    worse than on the champion's test split."""
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


# ---------------------------------------------------------------- how it reads


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
