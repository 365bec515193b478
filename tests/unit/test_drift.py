"""Drift statistics, the monitor's verdicts and its event cooldown, on small hand-made samples."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.config import MonitoringConfig
from prefect_mlops.mlops.drift import (
    MISSING,
    OTHER,
    categorical_drift,
    feature_drift,
    numeric_drift,
    psi,
)
from prefect_mlops.mlops.drift_report import (
    DriftReport,
    PerformanceCheck,
    drift_verdict,
    judge_performance,
)
from prefect_mlops.mlops.features import FeatureSpec
from prefect_mlops.serving.traffic import drift_rows
from prefect_mlops.tasks.monitoring import DRIFT_EVENT, event_to_emit

RNG = np.random.default_rng(11)


def test_psi_matches_its_definition_and_is_zero_for_equal_shares():
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    assert math.isfinite(psi([0.5, 0.5, 0.0], [0.4, 0.4, 0.2]))  # an empty bin is floored


def test_a_sample_of_the_same_distribution_is_stable_and_a_shifted_one_drifts():
    reference = pd.Series(RNG.normal(50, 10, 5000))
    same = numeric_drift("x", reference, pd.Series(RNG.normal(50, 10, 800)))
    shifted = numeric_drift("x", reference, pd.Series(RNG.normal(60, 10, 800)))

    assert same.psi < 0.05 and same.ks_statistic < 0.08
    assert shifted.psi > 0.5 and shifted.ks_statistic > 0.3
    assert len(same.bins) == 11  # ten quantile bins and one for missing values
    assert sum(same.reference_shares) == pytest.approx(1.0)


def test_values_that_start_arriving_missing_are_drift():
    reference = pd.Series(RNG.normal(0, 1, 1000))
    current = pd.Series([np.nan] * 300 + list(RNG.normal(0, 1, 300)))
    drift = numeric_drift("x", reference, current)
    assert drift.bins[-1] == MISSING
    assert drift.current_shares[-1] == pytest.approx(0.5)
    assert drift.psi > 1.0


def test_categories_unseen_in_training_count_as_other():
    reference = pd.Series(["a"] * 60 + ["b"] * 40)
    current = pd.Series(["a"] * 30 + ["new"] * 70)
    drift = categorical_drift("c", reference, current)
    assert drift.bins == ["a", "b", OTHER, MISSING]
    assert drift.current_shares == pytest.approx([0.3, 0.0, 0.7, 0.0])
    assert drift.psi > 1.0


def test_feature_drift_judges_each_column_and_lists_drifted_first():
    reference = pd.DataFrame(
        {"n": RNG.normal(0, 1, 3000), "m": RNG.normal(0, 1, 3000), "c": ["a", "b"] * 1500}
    )
    current = pd.DataFrame(
        {"n": RNG.normal(0, 1, 600), "m": RNG.normal(1.5, 1, 600), "c": ["a", "b"] * 300}
    )
    results = feature_drift(reference, current, ["n", "m"], ["c"], MonitoringConfig())
    assert results[0].column == "m"
    assert {r.column: r.drifted for r in results} == {"m": True, "n": False, "c": False}
    assert "PSI" in results[0].reason and "KS" in results[0].reason


def _report(features_drifted: int, performance: PerformanceCheck | None = None) -> DriftReport:
    features = [
        numeric_drift(f"f{i}", pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0])).model_copy(
            update={"drifted": i < features_drifted}
        )
        for i in range(4)
    ]
    return DriftReport(
        model_name="m",
        champion_version="3",
        window_start="",
        window_end="",
        rows=1000,
        status="no-champion",
        reason="",
        features=features,
        performance=performance,
    )


def test_the_verdict_needs_enough_drifted_features_or_degraded_performance():
    config = MonitoringConfig(min_drifted_features=2)
    assert drift_verdict(_report(1), config).status == "no-drift"
    drifted = drift_verdict(_report(2), config)
    assert drifted.status == "drift"
    assert drifted.reason.startswith("2 of 4 features drifted (f0, f1)")
    degraded = PerformanceCheck(labelled_rows=500, metric="roc_auc", degraded=True, detail="low")
    assert drift_verdict(_report(0, degraded), config).status == "degraded"


def test_performance_is_degraded_beyond_the_allowed_relative_drop_either_way_up():
    auc = PerformanceCheck(labelled_rows=500, metric="roc_auc", value=0.80, champion_test_value=0.9)
    assert judge_performance(auc, 0.05).degraded  # 0.80 < 0.855
    auc.value = 0.86
    assert not judge_performance(auc, 0.05).degraded
    rmse = PerformanceCheck(labelled_rows=500, metric="rmse", value=11.0, champion_test_value=10.0)
    assert judge_performance(rmse, 0.05).degraded  # lower is better: 11 > 10.5


def test_an_event_is_not_emitted_again_within_the_cooldown():
    now = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
    report = _report(3).model_copy(update={"status": "drift"})
    assert event_to_emit(report, None, 60, now) == (DRIFT_EVENT, "")
    recent = {"event": DRIFT_EVENT, "emitted_at": (now - dt.timedelta(minutes=20)).isoformat()}
    name, note = event_to_emit(report, recent, 60, now)
    assert name is None and "60-minute cooldown" in note
    old = {"event": DRIFT_EVENT, "emitted_at": (now - dt.timedelta(minutes=90)).isoformat()}
    assert event_to_emit(report, old, 60, now)[0] == DRIFT_EVENT
    calm = report.model_copy(update={"status": "no-drift"})
    assert event_to_emit(calm, None, 60, now) == (None, "")


def test_simulated_drift_shifts_numbers_by_a_deviation_and_skews_categories():
    spec = FeatureSpec(
        numeric=["amount"],
        log_transform=[],
        datetime=["when"],
        datetime_parts=["hour"],
        categorical={"kind": ["a", "b", "rare"]},
    )
    rows = pd.DataFrame(
        {
            "amount": RNG.normal(100, 20, 2000),
            "when": ["2025-01-01T00:00:00"] * 2000,
            "kind": ["a", "b"] * 1000,
        }
    )
    before = rows.copy()
    drifted = drift_rows(rows, spec, seed=1)
    pd.testing.assert_frame_equal(rows, before)  # the input is not changed
    assert drifted["amount"].mean() - rows["amount"].mean() == pytest.approx(rows["amount"].std())
    assert 0.4 < (drifted["kind"] == "rare").mean() < 0.6
    assert (drifted["when"] == rows["when"]).all()
