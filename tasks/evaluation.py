"""Evaluation: metrics and plots of a model on a held-out split."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from functools import cache
from typing import Protocol

import numpy as np
from mlflow.tracking import MlflowClient
from prefect import task
from pydantic import BaseModel

from prefect_mlops.mlops.config import PipelineConfig, TaskType
from prefect_mlops.mlops.dataset import TARGET_COLUMN, DatasetRef, read_split
from prefect_mlops.mlops.prediction import DEFAULT_THRESHOLD, class_scores
from prefect_mlops.mlops.scores import ScoresRef, save_scores, scores_ref, scoring_libraries
from prefect_mlops.mlops.thresholds import best_f1
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.loading import ModelStore
from prefect_mlops.model_registry.registry import logged_model_id, model_identity
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags, log_split_inputs, model_store

logger = logging.getLogger(__name__)

DEFERRED_IMPORTS = ("sklearn.metrics", "prefect_mlops.tasks.figures")
"""Imported by the functions that compute metrics or draw plots, not by importing this module
(the register stage reads only its result type); the fork servers import them ahead."""


class LoggedModel(Protocol):
    """What evaluation needs of a trained model (a ``TrainingResult``): its run and its files."""

    run_id: str
    model_uri: str


AT_HALF = "_at_0.5"
"""Suffix of a binary model's label metrics at the fixed 0.5 threshold (``f1_at_0.5``); the
plain names (``f1``) are at the model's own decision threshold."""
LABEL_METRICS = ("accuracy", "precision", "recall", "f1")
"""The metrics that depend on the decision threshold (the others are on the probabilities)."""


def classification_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    task: TaskType,
    threshold: float = DEFAULT_THRESHOLD,
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC-AUC and log-loss.

    Args:
        labels: Class indices.
        scores: Positive-class probability (binary) or class probabilities (multiclass).
        task: ``binary`` or ``multiclass``; multiclass averages are macro.
        threshold: A binary model's decision threshold: the label metrics are at it, and again
            at 0.5 as ``<metric>_at_0.5``, beside ``decision_threshold``.
        only: Compute just these metrics (the same values; the others are left out).
    """
    makers = _classification_makers(labels.astype(int), scores, task, threshold)
    return {k: float(make()) for k, make in makers.items() if only is None or k in only}


def _classification_makers(
    labels: np.ndarray, scores: np.ndarray, task: TaskType, threshold: float
) -> dict[str, Callable[[], float]]:
    """Each metric as a function computing it, in reporting order."""
    from sklearn import metrics as skm

    if task == "binary":
        n_classes = 2
        makers = _label_makers(labels, lambda: (scores >= threshold).astype(int), "binary")
        at_half = _label_makers(labels, lambda: (scores >= DEFAULT_THRESHOLD).astype(int), "binary")
        makers |= {f"{k}{AT_HALF}": v for k, v in at_half.items()}
        makers["decision_threshold"] = lambda: threshold
        proba = lambda: np.column_stack([1 - scores, scores])  # noqa: E731
    else:
        n_classes = scores.shape[1]
        makers = _label_makers(labels, lambda: scores.argmax(axis=1), "macro")
        proba = lambda: scores  # noqa: E731
    makers["log_loss"] = lambda: skm.log_loss(
        labels, np.clip(proba(), 1e-15, 1), labels=list(range(n_classes))
    )
    if len(np.unique(labels)) == n_classes:
        if task == "binary":
            makers["roc_auc"] = lambda: skm.roc_auc_score(labels, scores)
            makers["average_precision"] = lambda: skm.average_precision_score(labels, scores)
        else:
            makers["roc_auc"] = lambda: skm.roc_auc_score(
                labels, proba(), multi_class="ovr", average="macro"
            )
    return makers


def _label_makers(
    labels: np.ndarray, predicted: Callable[[], np.ndarray], average: str
) -> dict[str, Callable[[], float]]:
    from sklearn import metrics as skm

    @cache
    def precision_recall_f1() -> tuple[float, float, float]:
        # What precision_score, recall_score and f1_score each compute, computed once.
        found = skm.precision_recall_fscore_support(
            labels, predicted(), beta=1, average=average, zero_division=0
        )
        return found[0], found[1], found[2]

    return {
        "accuracy": lambda: skm.accuracy_score(labels, predicted()),
        "precision": lambda: precision_recall_f1()[0],
        "recall": lambda: precision_recall_f1()[1],
        "f1": lambda: precision_recall_f1()[2],
    }


def regression_metrics(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R²."""
    from sklearn import metrics as skm

    return {
        "rmse": float(np.sqrt(skm.mean_squared_error(targets, predictions))),
        "mae": float(skm.mean_absolute_error(targets, predictions)),
        "r2": float(skm.r2_score(targets, predictions)),
    }


def compute_metrics(
    task: TaskType,
    targets: np.ndarray,
    scores: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    only: Collection[str] | None = None,
) -> dict[str, float]:
    """The task's metrics from encoded targets and class scores (a binary model's labels at
    its decision ``threshold``, and at 0.5: see :func:`classification_metrics`); ``only``
    some of them when named (the same values)."""
    if task == "regression":
        found = regression_metrics(targets, scores)
        return {k: v for k, v in found.items() if only is None or k in only}
    return classification_metrics(targets, scores, task, threshold, only)


BEST_POSSIBLE = ("best_possible_f1", "best_possible_f1_threshold")
"""What :func:`best_threshold_metrics` adds to an evaluation's metrics."""


def best_threshold_metrics(
    task: TaskType, targets: np.ndarray, scores: np.ndarray
) -> dict[str, float]:
    """Binary: the best F1 any threshold gives on these rows, and that threshold.

    Chosen by looking at these rows' labels, so no model can count on it: it measures how much
    the model's own threshold, chosen on the validation split, leaves on the table.
    """
    if task != "binary" or len(np.unique(targets)) < 2:
        return {}
    f1, threshold = best_f1(targets, scores)
    return dict(zip(BEST_POSSIBLE, (f1, min(threshold, 1.0)), strict=True))


def primary_metric(task: TaskType) -> str:
    """The metric that summarises a model of this task."""
    return {"binary": "roc_auc", "multiclass": "f1", "regression": "rmse"}[task]


# ---------------------------------------------------------------- plots


@dataclass(frozen=True)
class SplitScores:
    """A model's scores on one split, with the targets and the model's decision threshold."""

    targets: np.ndarray
    """Encoded targets (see :func:`mlops.schema.encode_target`)."""
    scores: np.ndarray
    """Class scores (see :func:`mlops.prediction.class_scores`)."""
    threshold: float = DEFAULT_THRESHOLD
    """A binary model's decision threshold (0.5 for other tasks, which ignore it)."""
    ref: ScoresRef | None = None
    """Where the scores are kept for later stages (:mod:`mlops.scores`), once saved."""


def score_model_on_split(
    store: ModelStore, model_uri: str, dataset: DatasetRef, split: str
) -> SplitScores:
    """Load a logged model's files from the tracking store and score one split's raw rows.

    The files are checked in a child process first (:mod:`model_registry.loading`): they came
    back from the artifact store, where a damaged file would otherwise crash this stage. Only
    the model's input columns and the target are read.
    """
    model = store.load(model_uri)
    inputs = dataset.feature_spec.input_columns
    frame = read_split(dataset, split, columns=list(dict.fromkeys([*inputs, TARGET_COLUMN])))
    predictions = model.predict(frame[inputs])
    identity = model_identity(store.client, model_uri)
    return SplitScores(
        targets=frame[TARGET_COLUMN].to_numpy(dtype="float64"),
        scores=class_scores(predictions, dataset.task, dataset.classes),
        threshold=model.predictor.facts.threshold,
        ref=scores_ref(dataset, split, identity, scoring_libraries(model)),
    )


def keep_scores(scored: SplitScores) -> SplitScores:
    """Save the scores for later stages (the model gate); a store that refuses them only
    costs the gate a second scoring, so the scores come back without a reference then."""
    if scored.ref is None:
        return scored
    try:
        save_scores(scored.ref, scored.scores)
    except OSError as error:
        logger.warning(
            "Scores not kept at %s (%s): the model gate scores again", scored.ref.uri, error
        )
        return replace(scored, ref=None)
    return scored


@task(name="score-model", retries=1, retry_delay_seconds=5, persist_result=False)
def score_model(
    config: PipelineConfig, model_uri: str, dataset: DatasetRef, split: str
) -> SplitScores:
    """Score a logged model on a split and keep the scores in the artifact store."""
    return keep_scores(score_model_on_split(model_store(config), model_uri, dataset, split))


class EvaluationResult(BaseModel):
    """Test-split metrics of a candidate model."""

    run_id: str
    split: str
    rows: int
    metrics: dict[str, float]
    primary_metric: str
    scores: ScoresRef | None = None
    """The model's scores on the split, kept for the model gate (None: not kept)."""

    def metrics_from(self, kept: ScoresRef) -> dict[str, float] | None:
        """The metrics :func:`compute_metrics` gives on the scores kept at ``kept``, when they
        are the scores these metrics came from (else None: compute them)."""
        if self.scores is None or self.scores != kept:
            return None
        return {k: v for k, v in self.metrics.items() if k not in BEST_POSSIBLE}


def log_evaluation_run(
    client: MlflowClient,
    experiment_id: str,
    dataset: DatasetRef,
    model: LoggedModel,
    scored: SplitScores,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> EvaluationResult:
    """Compute and log test metrics and plots in an ``evaluate`` run (and on the training run).

    On the ``evaluate`` run, whose inputs are the model and the test split, the metrics are
    linked to the logged model and the test split (MLflow 3): they are the ones the model's
    page lists. The training run gets a copy of its own, for comparing runs side by side.
    A binary model's label metrics are at its decision threshold (``f1``) and at 0.5
    (``f1_at_0.5``); ``best_possible_f1`` is the best F1 any threshold gives on the test split.
    """
    from prefect_mlops.tasks.figures import evaluation_figures

    targets, scores = scored.targets, scored.scores
    metrics = compute_metrics(dataset.task, targets, scores, scored.threshold)
    metrics |= best_threshold_metrics(dataset.task, targets, scores)
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
        test_metrics = {f"test_{k}": v for k, v in metrics.items()}
        splits = log_split_inputs(client, run_id, dataset, "test")
        model_id = logged_model_id(model.model_uri)
        if model_id is not None:
            tracking.log_model_input(client, run_id, model_id)
        tracking.log_metrics(
            client, run_id, test_metrics, model_id=model_id, dataset=splits["test"]
        )
        tracking.log_figures(
            client,
            run_id,
            evaluation_figures(
                dataset.task, targets, scores, dataset.classes, "test", scored.threshold
            ),
        )
        tracking.log_metrics(client, model.run_id, test_metrics)
    return EvaluationResult(
        run_id=run_id,
        split="test",
        rows=len(targets),
        metrics=metrics,
        primary_metric=primary_metric(dataset.task),
        scores=scored.ref,
    )


@task(name="log-evaluation")
def log_evaluation(
    config: PipelineConfig,
    dataset: DatasetRef,
    model: LoggedModel,
    scored: SplitScores,
    parent_run_id: str | None,
) -> EvaluationResult:
    """Compute the test metrics and log them to MLflow."""
    client, experiment_id = experiment_for(config)
    return log_evaluation_run(
        client, experiment_id, dataset, model, scored, parent_run_id, lineage_tags(config)
    )
