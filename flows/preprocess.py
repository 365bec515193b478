"""Preprocess stage: source file -> typed, split, profiled Parquet dataset version."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.tasks.preprocessing import (
    ensure_synthetic_source,
    fingerprint_source,
    log_dataset,
    preprocess_dataset,
)


@flow(name="preprocess", log_prints=True, persist_result=True, result_serializer="json")
def preprocess_flow(config: PipelineConfig, parent_run_id: str | None = None) -> DatasetRef:
    """Read the source once, clean, split and profile it, and write a dataset version.

    Args:
        config: The use case.
        parent_run_id: MLflow run to nest this stage's run under (the pipeline's).

    Returns:
        A reference to the written (or already present) dataset version.
    """
    ensure_synthetic_source(config.data)
    fingerprint = fingerprint_source(config.data)
    dataset = preprocess_dataset(config, get_settings().resolved_artifact_store, fingerprint)
    log_dataset(config, dataset, parent_run_id)
    return dataset
