"""Train stage: the model family's trainer on a Dask cluster sized by the allocator, logged to MLflow."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.storage import artifact_store
from prefect_mlops.tasks.allocation import (
    publish_allocation,
    recommend_allocation,
    record_training_run,
)
from prefect_mlops.tasks.training import (
    TrainingResult,
    check_threshold_fits_task,
    log_training,
    train_model,
)
from prefect_mlops.tasks.tuning import tune_hyperparameters


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

    With several families (``training.family`` a list), each trains on the same cluster and
    the one with the lowest validation loss is logged as the candidate.

    The cluster comes from ``allocation`` (the pipeline asks the allocator before it starts
    this stage) or from the allocator here. Every attempt is recorded in the allocator's
    history; after running out of memory the allocator re-plans, up to
    ``training.allocator.max_replans`` times, instead of retrying the same shape. With
    ``training.tuning.enabled``, a hyperparameter search on the allocated cluster comes first
    and its best configuration trains the candidate.

    Returns:
        The MLflow run and logged model URI, with training time, memory and the allocation.

    Raises:
        TrainingFailed: when no planned cluster could train the model.
        ConfigError: a ``training.threshold`` section for a task inferred as not binary.
    """
    check_threshold_fits_task(config, dataset.task)
    allocation = allocation or recommend_allocation(config, dataset)
    work_uri = artifact_store().training_scratch()
    tuning = None
    if config.training.tuning.enabled:
        tuning = tune_hyperparameters(dataset, config.training, allocation, work_uri)
    training = tuning.training if tuning else config.training
    attempts = []
    for _ in range(config.training.allocator.max_replans + 1):
        attempt = train_model(dataset, training, allocation, work_uri)
        for run in attempt.runs:  # one per family trained
            record_training_run(run)
        attempts.append((allocation, attempt.profile))
        if attempt.trained is not None or attempt.profile.status != "out-of-memory":
            break
        allocation = recommend_allocation(config, dataset)  # learns from the failure
        if any(allocation.shape == tried.shape for tried, _ in attempts):
            break  # nothing else fits the use case's limits: retrying the same shape is futile
    publish_allocation(config.name, allocation, attempts)
    if attempt.trained is None:
        raise TrainingFailed(failure_message(attempts, attempt.error))
    return log_training(config, dataset, attempt, allocation, parent_run_id, tuning)


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
