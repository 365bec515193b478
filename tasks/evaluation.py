"""Evaluation: metrics and plots of a model on a held-out split."""

from __future__ import annotations

from typing import Protocol

import matplotlib

matplotlib.use("Agg")  # plots are files, never windows

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from mlflow.tracking import MlflowClient
from prefect import task
from pydantic import BaseModel
from sklearn import metrics as skm

from mlops.config import PipelineConfig, TaskType
from mlops.dataset import TARGET_COLUMN, DatasetRef, read_split
from mlops.prediction import class_scores
from model_registry import tracking
from model_registry.loading import ModelStore
from tasks.tracking import experiment_for, lineage_tags, model_store


class LoggedModel(Protocol):
    """What evaluation needs of a trained model (a ``TrainingResult``): its run and its files."""

    run_id: str
    model_uri: str


def classification_metrics(
    labels: np.ndarray, scores: np.ndarray, task: TaskType
) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC-AUC and log-loss.

    Args:
        labels: Class indices.
        scores: Positive-class probability (binary) or class probabilities (multiclass).
        task: ``binary`` or ``multiclass``; multiclass averages are macro.
    """
    labels = labels.astype(int)
    if task == "binary":
        predicted = (scores >= 0.5).astype(int)
        average, proba = "binary", np.column_stack([1 - scores, scores])
    else:
        predicted = scores.argmax(axis=1)
        average, proba = "macro", scores
    n_classes = proba.shape[1]
    result = {
        "accuracy": skm.accuracy_score(labels, predicted),
        "precision": skm.precision_score(labels, predicted, average=average, zero_division=0),
        "recall": skm.recall_score(labels, predicted, average=average, zero_division=0),
        "f1": skm.f1_score(labels, predicted, average=average, zero_division=0),
        "log_loss": skm.log_loss(labels, np.clip(proba, 1e-15, 1), labels=list(range(n_classes))),
    }
    if len(np.unique(labels)) == n_classes:
        if task == "binary":
            result["roc_auc"] = skm.roc_auc_score(labels, scores)
            result["average_precision"] = skm.average_precision_score(labels, scores)
        else:
            result["roc_auc"] = skm.roc_auc_score(labels, proba, multi_class="ovr", average="macro")
    return {k: float(v) for k, v in result.items()}


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R²."""
    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(targets, predictions))),
        "mae": float(skm.mean_absolute_error(targets, predictions)),
        "r2": float(skm.r2_score(targets, predictions)),
    }


def compute_metrics(task: TaskType, targets: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """The task's metrics from encoded targets and class scores."""
    if task == "regression":
        return regression_metrics(targets, scores)
    return classification_metrics(targets, scores, task)


def primary_metric(task: TaskType) -> str:
    """The metric that summarises a model of this task."""
    return {"binary": "roc_auc", "multiclass": "f1", "regression": "rmse"}[task]


# ---------------------------------------------------------------- plots


def evaluation_figures(
    task: TaskType, targets: np.ndarray, scores: np.ndarray, classes: list[str] | None, split: str
) -> dict[str, Figure]:
    """ROC, precision-recall and confusion matrix (classification) or residual plots (regression)."""
    if task == "regression":
        return {f"{split}_residuals": _residuals(targets, scores, split)}
    labels = targets.astype(int)
    figures = {f"{split}_confusion_matrix": _confusion(labels, scores, task, classes, split)}
    positives = (
        [(classes[1], labels == 1, scores)]
        if task == "binary"
        else [(c, labels == i, scores[:, i]) for i, c in enumerate(classes)]
    )
    positives = [p for p in positives if 0 < p[1].sum() < len(labels)]
    if positives:
        figures[f"{split}_roc_curve"] = _curves(positives, "roc", split)
        figures[f"{split}_precision_recall_curve"] = _curves(positives, "pr", split)
    return figures


def _thin(x: np.ndarray, y: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` evenly spaced points of a curve (a PR curve has one per distinct score)."""
    if len(x) <= points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, points).astype(int))
    return x[keep], y[keep]


def _curves(positives: list[tuple[str, np.ndarray, np.ndarray]], kind: str, split: str) -> Figure:
    figure, axis = plt.subplots(figsize=(6, 5))
    for label, truth, score in positives:
        if kind == "roc":
            fpr, tpr, _ = skm.roc_curve(truth, score)
            axis.plot(*_thin(fpr, tpr), label=f"{label} (AUC {skm.auc(fpr, tpr):.3f})")
        else:
            precision, recall, _ = skm.precision_recall_curve(truth, score)
            ap = skm.average_precision_score(truth, score)
            axis.plot(*_thin(recall, precision), label=f"{label} (AP {ap:.3f})")
    if kind == "roc":
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        axis.set(
            xlabel="False positive rate", ylabel="True positive rate", title=f"ROC curve ({split})"
        )
    else:
        axis.set(xlabel="Recall", ylabel="Precision", title=f"Precision-recall curve ({split})")
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def _confusion(
    labels: np.ndarray, scores: np.ndarray, task: TaskType, classes: list[str], split: str
) -> Figure:
    predicted = (scores >= 0.5).astype(int) if task == "binary" else scores.argmax(axis=1)
    matrix = skm.confusion_matrix(labels, predicted, labels=list(range(len(classes))))
    figure, axis = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.0 * len(classes) + 2.5))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(
            col,
            row,
            f"{value:,}",
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
            fontsize=8,
        )
    axis.set(xlabel="Predicted", ylabel="Actual", title=f"Confusion matrix ({split})")
    figure.tight_layout()
    return figure


def _residuals(targets: np.ndarray, predictions: np.ndarray, split: str) -> Figure:
    residuals = targets - predictions
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(predictions, residuals, s=4, alpha=0.3)
    left.axhline(0, color="grey", linestyle="--", linewidth=1)
    left.set(
        xlabel="Predicted", ylabel="Actual - predicted", title=f"Residuals vs predicted ({split})"
    )
    right.hist(residuals, bins=60)
    right.set(xlabel="Residual", ylabel="Rows", title="Residual distribution")
    figure.tight_layout()
    return figure


def feature_importance_figure(importance: pd.DataFrame, top: int = 25) -> Figure:
    """Horizontal bar chart of the top features by gain."""
    shown = importance.head(top).iloc[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    axis.barh(shown["feature"], shown["gain"])
    axis.set(xlabel="Total gain", title=f"Feature importance (top {len(shown)} by gain)")
    figure.tight_layout()
    return figure


def learning_curve_figure(curve: list[float], best_iteration: int, metric: str) -> Figure:
    """Validation loss per boosting round, with the kept round marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(range(1, len(curve) + 1), curve)
    axis.axvline(
        best_iteration, color="tab:red", linestyle="--", label=f"best round {best_iteration}"
    )
    axis.set(xlabel="Boosting round", ylabel=f"validation {metric}", title="Learning curve")
    axis.legend()
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- scoring a logged model


def score_model_on_split(
    store: ModelStore, model_uri: str, dataset: DatasetRef, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Load a logged model's files from the tracking store and score one split's raw rows.

    The files are checked in a child process first (:mod:`model_registry.loading`): they came
    back from the artifact store, where a damaged file would otherwise crash this stage.

    Returns:
        Encoded targets and class scores (see :func:`mlops.pyfunc.class_scores`).
    """
    model = store.load(model_uri)
    frame = read_split(dataset, split)
    predictions = model.predict(frame[dataset.feature_spec.input_columns])
    scores = class_scores(predictions, dataset.task, dataset.classes)
    return frame[TARGET_COLUMN].to_numpy(dtype="float64"), scores


@task(name="score-model", retries=1, retry_delay_seconds=5, persist_result=False)
def score_model(
    config: PipelineConfig, model_uri: str, dataset: DatasetRef, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Score a logged model on a split."""
    return score_model_on_split(model_store(config), model_uri, dataset, split)


class EvaluationResult(BaseModel):
    """Test-split metrics of a candidate model."""

    run_id: str
    split: str
    rows: int
    metrics: dict[str, float]
    primary_metric: str


def log_evaluation_run(
    client: MlflowClient,
    experiment_id: str,
    dataset: DatasetRef,
    model: LoggedModel,
    targets: np.ndarray,
    scores: np.ndarray,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> EvaluationResult:
    """Compute and log test metrics and plots in an ``evaluate`` run (and on the training run)."""
    metrics = compute_metrics(dataset.task, targets, scores)
    with tracking.stage_run(client, experiment_id, "evaluate", parent_run_id, tags) as run:
        run_id = run.run_id
        tracking.log_params(
            client,
            run_id,
            {
                "model_uri": model.model_uri,
                "split": "test",
                "rows": len(targets),
                "dataset.version": dataset.version,
            },
        )
        tracking.log_metrics(client, run_id, {f"test_{k}": v for k, v in metrics.items()})
        tracking.log_figures(
            client,
            run_id,
            evaluation_figures(dataset.task, targets, scores, dataset.classes, "test"),
        )
        tracking.log_metrics(client, model.run_id, {f"test_{k}": v for k, v in metrics.items()})
    return EvaluationResult(
        run_id=run_id,
        split="test",
        rows=len(targets),
        metrics=metrics,
        primary_metric=primary_metric(dataset.task),
    )


@task(name="log-evaluation")
def log_evaluation(
    config: PipelineConfig,
    dataset: DatasetRef,
    model: LoggedModel,
    targets: np.ndarray,
    scores: np.ndarray,
    parent_run_id: str | None,
) -> EvaluationResult:
    """Compute the test metrics and log them to MLflow."""
    client, experiment_id = experiment_for(config)
    return log_evaluation_run(
        client, experiment_id, dataset, model, targets, scores, parent_run_id, lineage_tags(config)
    )
