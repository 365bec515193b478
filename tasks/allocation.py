"""Prefect tasks around the allocator: recommend a cluster, record a run, publish the report."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.infra.allocator.history import RunProfile
from prefect_mlops.infra.allocator.planner import (
    open_catalogue,
    open_history,
    plan_allocation,
    recorded_runs,
    resources_for,
)
from prefect_mlops.infra.allocator.profiling import job_features
from prefect_mlops.infra.allocator.report import allocation_markdown
from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.families import family
from prefect_mlops.mlops.settings import get_settings


def recommend_for_dataset(config: PipelineConfig, dataset: DatasetRef) -> Allocation:
    """Plan the training cluster for a preprocessed dataset from the recorded history (for
    the config's first family, when it names several)."""
    settings = get_settings()
    return plan_allocation(
        job_features(dataset, config.training, family(config.training.families[0])),
        config.training.allocator,
        config.training.cluster,
        recorded_runs(settings),
        resources_for(config.training.cluster, settings),
        settings.allocator_gpu_prior_speedup,
        open_catalogue(settings),
    )


@task(name="recommend-allocation", retries=2, retry_delay_seconds=[2, 10])
def recommend_allocation(config: PipelineConfig, dataset: DatasetRef) -> Allocation:
    """Ask the allocator for this run's cluster and log the answer."""
    allocation = recommend_for_dataset(config, dataset)
    logger = get_run_logger()
    logger.info("Allocation: %s", allocation.summary())
    for line in allocation.rationale:
        logger.info("  %s", line)
    return allocation


@task(name="record-training-run", retries=2, retry_delay_seconds=[2, 10])
def record_training_run(profile: RunProfile) -> None:
    """Add a measured run (successful or not) to the allocator's history."""
    store = open_history(get_settings())
    try:
        store.record(profile)
    finally:
        store.close()


@task(name="publish-allocation")
def publish_allocation(
    use_case: str, allocation: Allocation, attempts: list[tuple[Allocation, RunProfile]]
) -> None:
    """The allocation report as a Prefect markdown artifact on the train run."""
    key = "allocation-" + "".join(c if c.isalnum() else "-" for c in use_case.lower())
    create_markdown_artifact(
        markdown=allocation_markdown(allocation, attempts),
        key=key[:100],
        description=f"Cluster allocation for {use_case}: {allocation.summary()}",
    )
