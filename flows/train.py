"""Train stage: the model family's trainer on a Dask cluster sized by the allocator, logged to MLflow."""

from __future__ import annotations

import uuid

from prefect import flow

from infra.allocator.recommend import Allocation
from mlops.config import PipelineConfig
from mlops.dataset import DatasetRef
from mlops.errors import MlopsError
from mlops.settings import get_settings
from tasks.allocation import publish_allocation_task, recommend_allocation_task, record_run_task
from tasks.training import TrainingResult, log_training_task, train_model_task


class TrainingFailed(MlopsError):
    """Training failed on every cluster the allocator planned; nothing was logged."""

    exit_code = 1


@flow(name="train", log_prints=True, persist_result=True, result_serializer="json")
def train_flow(
    config: PipelineConfig,
    dataset: DatasetRef,
    parent_run_id: str | None = None,
    allocation: Allocation | None = None,
) -> TrainingResult:
    """Train on the dataset's training split with early stopping on its validation split.

    The cluster comes from ``allocation`` (the pipeline asks the allocator before it starts
    this stage) or from the allocator here. Every attempt is recorded in the allocator's
    history; after running out of memory the allocator re-plans, up to
    ``training.allocator.max_replans`` times, instead of retrying the same shape.

    Returns:
        The MLflow run and logged model URI, with training time, memory and the allocation.

    Raises:
        TrainingFailed: when no planned cluster could train the model.
    """
    allocation = allocation or recommend_allocation_task(config, dataset)
    work_uri = f"{get_settings().resolved_artifact_store}/training/{uuid.uuid4().hex}"
    attempts = []
    for _ in range(config.training.allocator.max_replans + 1):
        attempt = train_model_task(dataset, config.training, allocation, work_uri)
        record_run_task(attempt.profile)
        attempts.append((allocation, attempt.profile))
        if attempt.trained is not None or attempt.profile.status != "out-of-memory":
            break
        allocation = recommend_allocation_task(config, dataset)  # learns from the failure
        if any(allocation.shape == tried.shape for tried, _ in attempts):
            break  # nothing else fits the use case's limits: retrying the same shape is futile
    publish_allocation_task(config.name, allocation, attempts)
    if attempt.trained is None:
        raise TrainingFailed(failure_message(attempts, attempt.error))
    return log_training_task(config, dataset, attempt, allocation, parent_run_id)


def failure_message(attempts: list, error: str | None) -> str:
    """What was tried and what to change, for a training stage that gave up."""
    tried = ", ".join(f"{a.shape.label()} ({run.status})" for a, run in attempts)
    if len(attempts) == 1 and attempts[0][1].status == "out-of-memory":
        tried += "; re-planning found no other shape within the limits"
    advice = (
        "Allow more memory per worker (training.allocator.max_memory_per_worker) or a bigger "
        "cluster."
        if attempts[-1][1].status == "out-of-memory"
        else "See the train flow's logs for the error."
    )
    return f"Training failed on every planned cluster: {tried}. Last error: {error}. {advice}"
