"""Register stage: a model version with lineage tags, as ``challenger`` until the model gate decides."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.tasks.evaluation import EvaluationResult
from prefect_mlops.tasks.registration import register_model
from prefect_mlops.tasks.training import TrainingResult


@flow(name="register", log_prints=True, persist_result=True, result_serializer="json")
def register_flow(
    config: PipelineConfig,
    dataset: DatasetRef,
    training: TrainingResult,
    evaluation: EvaluationResult,
    parent_run_id: str | None = None,
) -> RegisteredVersion:
    """Register the evaluated model as ``challenger``; only the model gate makes a champion."""
    return register_model(config, dataset, training, evaluation, parent_run_id)
