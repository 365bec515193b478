"""The allocator inside the pipeline: every run recorded, shown in MLflow and Prefect, OOM re-planned."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.flows.train import TrainingFailed, train_flow
from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.infra.allocator.planner import open_history
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry.tracking import tracking_uri_for
from tests.integration.conftest import bundled_config

MIB = 2**20


def recorded_runs():
    store = open_history(get_settings())
    try:
        return store.runs()
    finally:
        store.close()


def forced(memory_bytes: int) -> Allocation:
    """An allocation the allocator would never make: far too little memory per worker."""
    return Allocation(
        workers=1,
        threads_per_worker=1,
        memory_per_worker_bytes=memory_bytes,
        gpu=False,
        predicted_wall_time_s=5.0,
        predicted_peak_memory_bytes=100 * MIB,
        predicted_cost=5.0,
        confidence=0.1,
        confidence_label="low",
        objective="forced by the test",
        rationale=["forced by the test"],
    )


def test_pipeline_records_its_run_and_shows_the_allocation(fraud_config):
    result = retraining_pipeline_flow(fraud_config)

    runs = recorded_runs()
    assert len(runs) == 1
    run = runs[0]
    assert (run.status, run.use_case, run.source) == ("success", "fraud-detection", "pipeline")
    assert result.training_cluster.startswith(run.shape.label())
    assert run.peak_memory_bytes > 100 * MIB  # measured on the worker, not the driver
    assert run.predicted_wall_time_s > 0 and run.predicted_peak_memory_bytes > 0
    assert run.n_rows > 10_000 and run.bytes_in_memory > 0

    uri = tracking_uri_for(fraud_config)
    client = MlflowClient(uri, registry_uri=uri)
    train_run = client.get_run(result.training_run_id)
    params, tags, metrics = train_run.data.params, train_run.data.tags, train_run.data.metrics
    assert int(params["allocator.workers"]) == run.workers
    assert int(params["cluster.n_workers"]) == run.workers
    assert params["allocator.confidence"] == "low"  # first run: prior only
    assert "No run history yet" in tags["allocator.rationale"]
    assert metrics["allocator.actual_time_s"] == pytest.approx(run.total_time_s)
    assert metrics["allocator.predicted_time_s"] == pytest.approx(run.predicted_wall_time_s)

    artifact = Artifact.get("allocation-fraud-detection")
    assert artifact is not None and artifact.type == "markdown"
    assert "## Predicted vs actual" in artifact.data and "## Alternatives" in artifact.data

    # The second run learns from the first: its rationale cites it.
    retraining_pipeline_flow(fraud_config)
    second = recorded_runs()[-1]
    assert len(recorded_runs()) == 2
    assert second.predicted_wall_time_s is not None
    assert "Learned from 1 past run" in Artifact.get("allocation-fraud-detection").data


def test_out_of_memory_is_recorded_and_replanned_on_a_bigger_shape(fraud_file):
    config = bundled_config("fraud_detection", fraud_file).model_copy(update={"name": "fraud-oom"})
    dataset = preprocess_flow(config)

    # A worker that has imported LightGBM holds about 240 MiB before it reads a row (measured):
    # 150 MiB is out of memory whatever the training path, 300 MiB only by a small margin.
    trained = train_flow(config, dataset, allocation=forced(150 * MIB))

    first, second = recorded_runs()
    assert first.status == "out-of-memory" and first.memory_per_worker_bytes == 150 * MIB
    assert second.status == "success"
    assert second.shape != first.shape
    assert second.memory_per_worker_bytes > first.memory_per_worker_bytes
    assert trained.allocation.shape == second.shape
    report = Artifact.get("allocation-fraud-oom").data
    assert "| 1 | 1x1 @ 0.15 GiB | out-of-memory |" in report
    assert "| 2 |" in report and "success" in report


def test_training_that_runs_out_of_memory_everywhere_fails_clearly(fraud_file):
    config = bundled_config("fraud_detection", fraud_file)
    config = config.model_copy(
        update={
            "name": "fraud-tiny",
            "training": config.training.model_copy(
                update={
                    "allocator": config.training.allocator.model_copy(
                        update={"max_memory_per_worker": "150MiB", "max_replans": 1}
                    )
                }
            ),
        }
    )
    dataset = preprocess_flow(config)

    with pytest.raises(
        TrainingFailed,
        match=r"out-of-memory\); re-planning found no other shape.*Allow more memory",
    ):
        train_flow(config, dataset)

    assert [r.status for r in recorded_runs()] == ["out-of-memory"]  # not retried as it was
    uri = tracking_uri_for(config)
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(config.experiment_name)
    train_runs = client.search_runs([experiment.experiment_id], "tags.mlops.stage = 'train'")
    assert train_runs == []  # nothing half-written: no train run, no model
