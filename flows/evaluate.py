"""Evaluate stage: the logged model, loaded from its files in MLflow, scored on the test split."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.tasks.evaluation import EvaluationResult, log_evaluation, score_model
from prefect_mlops.tasks.training import TrainingResult


@flow(name="evaluate", log_prints=True, persist_result=True, result_serializer="json")
def evaluate_flow(
    config: PipelineConfig,
    dataset: DatasetRef,
    training: TrainingResult,
    parent_run_id: str | None = None,
) -> EvaluationResult:
    """Compute test-split metrics of the trained model and log them with plots."""
    scored = score_model(config, training.model_uri, dataset, "test")
    return log_evaluation(config, dataset, training, scored, parent_run_id)
