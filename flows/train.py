"""Train stage: LightGBM on a Dask cluster, logged to MLflow with its model."""

from __future__ import annotations

import uuid

from prefect import flow

from mlops.config import PipelineConfig
from mlops.dataset import DatasetRef
from mlops.settings import get_settings
from tasks.training import TrainingResult, log_training_task, train_model_task


@flow(name="train", log_prints=True, persist_result=True, result_serializer="json")
def train_flow(
    config: PipelineConfig, dataset: DatasetRef, parent_run_id: str | None = None
) -> TrainingResult:
    """Train on the dataset's training split with early stopping on its validation split.

    Returns:
        The MLflow run and logged model URI, with training time and memory.
    """
    work_uri = f"{get_settings().resolved_artifact_store}/training/{uuid.uuid4().hex}"
    trained = train_model_task(dataset, config.training, work_uri)
    return log_training_task(config, dataset, trained, parent_run_id)
