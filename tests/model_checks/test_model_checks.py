"""The model gate's checks and the ledger, on small arrays (no model, no MLflow)."""

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.config import ModelGateConfig
from prefect_mlops.mlops.dataset import TARGET_COLUMN
from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.gates import GateCheck, GateLedger, ledger_markdown
from prefect_mlops.model_registry.ledger import ledger_tags
from prefect_mlops.tasks.model_gate_checks import (
    allowed_bound,
    check_metric_names,
    floor_checks,
    latency_check,
    no_regression_check,
    single_row_latency_ms,
    size_check,
    slice_checks,
)


def test_floors_are_ceilings_for_lower_is_better_metrics():
    checks = floor_checks({"roc_auc": 0.81, "rmse": 12.0}, {"roc_auc": 0.8, "rmse": 10.0})
    verdicts = {c.name: c.verdict for c in checks}
    assert verdicts == {"metric.roc_auc.floor": "pass", "metric.rmse.floor": "fail"}
    assert checks[1].threshold == "≤ 10"


def test_a_metric_that_could_not_be_computed_fails_its_floor():
    (check,) = floor_checks({"f1": 0.5}, {"roc_auc": 0.6})
    assert check.verdict == "fail" and "could not be computed" in check.detail


def test_floors_on_label_metrics_apply_at_the_models_decision_threshold():
    from prefect_mlops.tasks.evaluation import compute_metrics

    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.05, 0.1, 0.3, 0.2, 0.45])  # nothing reaches 0.5
    metrics = compute_metrics("binary", labels, scores, threshold=0.15)
    checks = {c.name: c for c in floor_checks(metrics, {"recall": 0.9, "roc_auc": 0.8})}
    recall = checks["metric.recall.floor"]
    assert recall.verdict == "pass" and recall.value == 1.0  # at 0.5 it would be 0
    assert recall.description == "test recall at its decision threshold 0.15 ≥ 0.9"
    assert checks["metric.roc_auc.floor"].description == "test roc_auc ≥ 0.8"


def test_slices_judge_each_model_at_its_own_threshold():
    frame, good = slices_frame()
    gate = ModelGateConfig(slices=["city"], slice_min_rows=100, slice_max_regression=0.05)
    shrunk = good * 0.4  # the same ranking, probabilities scaled down: at 0.5 it flags little
    at_half = {c.name: c for c in slice_checks(frame, "binary", shrunk, good, gate, "f1")}
    assert at_half["slice.city=lyon.f1"].verdict == "fail"
    own = {c.name: c for c in slice_checks(frame, "binary", shrunk, good, gate, "f1", (0.2, 0.5))}
    assert own["slice.city=lyon.f1"].verdict == "pass"  # 0.4 x 0.5: the same rows flagged


@pytest.mark.parametrize(
    ("metric", "candidate", "champion", "verdict"),
    [
        ("roc_auc", 0.881, 0.889, "pass"),  # 1.0% worse allowed: bound 0.8801
        ("roc_auc", 0.870, 0.889, "fail"),
        ("rmse", 10.09, 10.0, "pass"),  # lower is better: bound 10.1
        ("rmse", 10.2, 10.0, "fail"),
        ("r2", -0.5, -0.4, "fail"),  # negative reference: slack is relative to its size
    ],
)
def test_no_regression_tolerance_is_relative(metric, candidate, champion, verdict):
    check = no_regression_check(metric, candidate, champion, "3", tolerance=0.01)
    assert check.verdict == verdict
    assert "champion v3" in check.threshold


def test_no_regression_is_skipped_without_a_champion():
    check = no_regression_check("roc_auc", 0.9, None, None, tolerance=0.01)
    assert check.verdict == "skip" and "first" in check.detail


def test_allowed_bound_direction():
    assert allowed_bound("f1", 0.5, 0.1) == pytest.approx(0.45)
    assert allowed_bound("log_loss", 0.5, 0.1) == pytest.approx(0.55)


def test_metric_names_must_exist_for_the_task():
    with pytest.raises(ConfigError, match=r"model_gate.metric_floors names \['rmse'\]"):
        check_metric_names(ModelGateConfig(metric_floors={"rmse": 1.0}), "binary", {"roc_auc"})
    with pytest.raises(ConfigError, match="model_gate.primary_metric"):
        check_metric_names(ModelGateConfig(), "regression", {"r2"})  # default primary is rmse


def slices_frame(n_per_city: int = 400) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    cities = np.repeat(["lyon", "paris", "tiny"], [n_per_city, n_per_city, 30])
    labels = (rng.random(len(cities)) < 0.3).astype(float)
    scores = np.clip(labels * 0.6 + rng.random(len(cities)) * 0.5, 0, 1)  # informative
    frame = pd.DataFrame({"city": cities, TARGET_COLUMN: labels})
    return frame, scores


def test_slices_compare_each_value_and_skip_small_ones():
    frame, good = slices_frame()
    worse = good.copy()
    paris = (frame["city"] == "paris").to_numpy()
    worse[paris] = np.random.default_rng(1).random(paris.sum())  # no signal on paris
    gate = ModelGateConfig(slices=["city"], slice_min_rows=100, slice_max_regression=0.05)
    checks = {c.name: c for c in slice_checks(frame, "binary", worse, good, gate, "roc_auc")}
    assert checks["slice.city=lyon.roc_auc"].verdict == "pass"
    assert checks["slice.city=paris.roc_auc"].verdict == "fail"
    assert checks["slice.city.roc_auc"].verdict == "skip"
    assert "tiny" in checks["slice.city.roc_auc"].detail


def test_slices_are_skipped_without_a_champion():
    frame, scores = slices_frame()
    gate = ModelGateConfig(slices=["city"])
    (check,) = slice_checks(frame, "binary", scores, None, gate, "roc_auc")
    assert check.verdict == "skip" and "no champion" in check.detail


class SleepyModel:
    """Predicts after a fixed delay: a stand-in for any model's predict()."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[int] = []

    def predict(self, frame):
        import time

        self.calls.append(len(frame))
        time.sleep(self.seconds)
        return frame


def test_latency_is_measured_one_row_at_a_time():
    model = SleepyModel(0.002)
    timings = single_row_latency_ms(model, pd.DataFrame({"x": range(7)}), samples=30)
    assert len(timings) == 30 and set(model.calls) == {1}
    assert timings.min() >= 2.0
    assert latency_check(timings, None, budget_ms=1.0).verdict == "fail"
    assert latency_check(timings, timings, budget_ms=1000).verdict == "pass"


def test_size_budget():
    assert size_check(3 * 2**20, budget_mb=2).verdict == "fail"
    assert size_check(3 * 2**20, budget_mb=5).value == pytest.approx(3.0)


def ledger(*verdicts: str) -> GateLedger:
    checks = [
        GateCheck(gate="model", name=f"c{i}", description=f"check {i}", value=0.5, verdict=v)
        for i, v in enumerate(verdicts)
    ]
    return GateLedger(
        model_name="m",
        candidate_version="2",
        candidate_run_id="r",
        champion_version="1",
        primary_metric="roc_auc",
        checks=checks,
    )


def test_ledger_passes_unless_a_check_fails():
    assert ledger("pass", "skip").passed
    rejected = ledger("pass", "fail", "skip")
    assert not rejected.passed and rejected.verdict == "rejected"
    assert rejected.reason() == "check 1: fail | value 0.5"


def test_ledger_markdown_and_tags_list_every_check():
    rejected = ledger("pass", "fail", "skip")
    text = ledger_markdown(rejected)
    assert "**Decision: REJECTED**" in text and "champion before the gate: version 1" in text
    assert text.count("\n| model | check") == 3
    tags = ledger_tags(rejected)
    assert tags["gate.verdict"] == "rejected" and tags["gate.checks_failed"] == "1"
    assert tags["gate.model.c1"].startswith("fail")
    assert {k for k in tags if k.startswith("gate.model.")} == {
        "gate.model.c0",
        "gate.model.c1",
        "gate.model.c2",
    }


def test_the_ledger_lists_metrics_at_both_thresholds_and_tags_the_threshold():
    rejected = ledger("pass").model_copy(
        update={
            "candidate_metrics": {"f1": 0.31, "f1_at_0.5": 0.12, "decision_threshold": 0.15},
            "champion_metrics": {"f1": 0.29, "f1_at_0.5": 0.1, "decision_threshold": 0.2},
        }
    )
    text = ledger_markdown(rejected)
    assert "| f1 | 0.31 | 0.29 |" in text and "| f1_at_0.5 | 0.12 | 0.1 |" in text
    assert "| decision_threshold | 0.15 | 0.2 |" in text
    assert ledger_tags(rejected)["gate.decision_threshold"] == "0.15"


def test_check_tag_keys_are_safe_for_mlflow():
    check = GateCheck(gate="model", name="slice.city=São Paulo.f1", description="d", verdict="pass")
    assert check.tag_key == "gate.model.slice.city_S_o Paulo.f1"
