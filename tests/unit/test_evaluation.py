import numpy as np
import pytest

from prefect_mlops.tasks.evaluation import compute_metrics, primary_metric
from prefect_mlops.tasks.figures import evaluation_figures


def test_binary_metrics_on_known_scores():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    metrics = compute_metrics("binary", labels, scores)
    assert metrics["accuracy"] == pytest.approx(0.6)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["roc_auc"] == pytest.approx(5 / 6)
    assert primary_metric("binary") == "roc_auc"


def test_multiclass_metrics_perfect_model():
    labels = np.array([0, 1, 2, 2])
    scores = np.eye(3)[labels] * 0.9 + 0.1 / 3
    metrics = compute_metrics("multiclass", labels, scores)
    assert metrics["accuracy"] == 1.0 and metrics["f1"] == 1.0 and metrics["roc_auc"] == 1.0


def test_regression_metrics():
    metrics = compute_metrics("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert metrics["mae"] == pytest.approx(2 / 3)
    assert metrics["rmse"] == pytest.approx(np.sqrt(4 / 3))


def test_figures_per_task():
    labels = np.array([0, 1, 2, 1, 0, 2])
    scores = np.eye(3)[labels] * 0.7 + 0.1
    names = set(evaluation_figures("multiclass", labels, scores, ["a", "b", "c"], "test"))
    assert names == {"test_confusion_matrix", "test_roc_curve", "test_precision_recall_curve"}
    assert set(evaluation_figures("regression", np.ones(5), np.ones(5), None, "test")) == {
        "test_residuals"
    }


def test_binary_label_metrics_are_at_the_models_threshold_and_at_one_half():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.05, 0.1, 0.3, 0.2, 0.45])  # rare positives: nothing reaches 0.5
    metrics = compute_metrics("binary", labels, scores, threshold=0.15)
    assert metrics["decision_threshold"] == 0.15
    assert metrics["recall"] == 1.0 and metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["recall_at_0.5"] == 0.0 and metrics["f1_at_0.5"] == 0.0
    assert metrics["accuracy_at_0.5"] == pytest.approx(0.6)
    # the probability metrics do not depend on it
    assert metrics["roc_auc"] == compute_metrics("binary", labels, scores)["roc_auc"]


def test_best_possible_f1_is_reported_beside_the_models_own():
    from prefect_mlops.tasks.evaluation import best_threshold_metrics

    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.05, 0.1, 0.3, 0.2, 0.45])
    best = best_threshold_metrics("binary", labels, scores)
    assert best["best_possible_f1"] == pytest.approx(0.8)
    assert 0.1 < best["best_possible_f1_threshold"] <= 0.2
    assert best_threshold_metrics("multiclass", labels, np.eye(3)[labels]) == {}


def test_the_binary_confusion_matrix_is_drawn_at_the_threshold():
    labels = np.array([0, 0, 1, 1])
    figures = evaluation_figures(
        "binary", labels, np.array([0.1, 0.2, 0.3, 0.4]), ["a", "b"], "test", 0.25
    )
    title = figures["test_confusion_matrix"].axes[0].get_title()
    assert title == "Confusion matrix (test, threshold 0.25)"


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_metrics_asked_for_one_by_one_are_the_ones_computed_together(task):
    rng = np.random.default_rng(4)
    if task == "binary":
        targets = (rng.random(300) < 0.2).astype(float)
        scores = np.clip(targets * 0.4 + rng.random(300) * 0.6, 0, 1)
    elif task == "multiclass":
        targets = rng.integers(0, 3, 300).astype(float)
        scores = rng.dirichlet([1, 1, 1], 300)
    else:
        targets = rng.normal(size=300)
        scores = targets + rng.normal(size=300)
    together = compute_metrics(task, targets, scores, 0.3)
    for name, value in together.items():
        assert compute_metrics(task, targets, scores, 0.3, only={name}) == {name: value}
    assert compute_metrics(task, targets, scores, 0.3, only={"no such metric"}) == {}
