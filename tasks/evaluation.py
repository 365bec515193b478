"""Evaluation: metrics and plots of a model on a held-out split."""

from __future__ import annotations

from typing import Protocol

import numpy as np
from mlflow.tracking import MlflowClient
from prefect import task
from pydantic import BaseModel
from sklearn import metrics as skm

from mlops.config import PipelineConfig, TaskType
from mlops.dataset import TARGET_COLUMN, DatasetRef, read_split
from mlops.prediction import class_scores
from model_registry import tracking
from model_registry.loading import ModelStore
from tasks.figures import evaluation_figures
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


def score_model_on_split(
    store: ModelStore, model_uri: str, dataset: DatasetRef, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """Load a logged model's files from the tracking store and score one split's raw rows.

    The files are checked in a child process first (:mod:`model_registry.loading`): they came
    back from the artifact store, where a damaged file would otherwise crash this stage.

    Returns:
        Encoded targets and class scores (see :func:`mlops.prediction.class_scores`).
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
