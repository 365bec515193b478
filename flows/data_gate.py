"""Data gate stage: a Great Expectations suite run on a new dataset version before training."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.gates import DataGateResult
from prefect_mlops.tasks.data_gate import (
    derive_expectation_suite,
    enforce_data_gate,
    find_reference_dataset,
    record_data_gate,
    validate_dataset,
)


@flow(name="data-gate", log_prints=True, persist_result=True, result_serializer="json")
def data_gate_flow(
    config: PipelineConfig, dataset: DatasetRef, parent_run_id: str | None = None
) -> DataGateResult:
    """Validate a dataset version against the champion's training data; raise if it fails.

    Args:
        config: The use case (its ``data_gate`` section sets checks and tolerances).
        dataset: The candidate dataset version from the preprocess stage.
        parent_run_id: MLflow run to nest this stage's run under (the pipeline's).

    Returns:
        Every check with its verdict, when the gate passes.

    Raises:
        DataValidationError: naming each failed expectation, observed vs allowed.
    """
    reference, origin = find_reference_dataset(config, dataset)
    suite, suite_uri = derive_expectation_suite(config, reference)
    result = validate_dataset(
        dataset, reference, origin, suite, suite_uri, config.data_gate.max_rows_validated
    )
    result = record_data_gate(config, result, parent_run_id)
    enforce_data_gate(result, config.data.source)
    return result
