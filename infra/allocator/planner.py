"""The allocator's entry points for the pipeline and the CLI: plan a run, record its outcome."""

from __future__ import annotations

from collections.abc import Sequence

from dask.utils import parse_bytes

from infra.dask_cluster import scheduler_workers
from mlops.config import AllocatorConfig, ClusterConfig
from mlops.settings import Settings

from .history import ClusterShape, HistoryStore, JobFeatures, RunProfile
from .model import fit_model
from .recommend import Allocation, Objective, Pricing, confidence_label, recommend_allocation
from .resources import (
    Resources,
    candidate_shapes,
    cluster_resources,
    existing_cluster_resources,
    local_resources,
)


def open_history(settings: Settings) -> HistoryStore:
    """The run history named by settings (SQLite under ``.mlops/`` by default)."""
    return HistoryStore(settings.resolved_history_url)


def resources_for(cluster: ClusterConfig, settings: Settings) -> Resources:
    """What a run may get: this machine, the workers of an existing scheduler, or the limits
    configured for a KubeCluster.

    Raises:
        ClusterUnavailable: when the existing scheduler cannot be reached or has no worker.
    """
    kind = "scheduler" if cluster.scheduler_address else settings.resolved_dask_cluster
    if kind == "scheduler":
        address = cluster.scheduler_address or settings.dask_scheduler_address
        return existing_cluster_resources(
            address, scheduler_workers(address), settings.allocator_max_workers
        )
    if kind == "kubernetes":
        return cluster_resources(
            settings.allocator_max_workers or cluster.n_workers,
            settings.allocator_threads_per_worker,
            settings.allocator_memory_per_worker,
            settings.allocator_gpus or 0,
            backend="kubernetes",
        )
    return local_resources(settings.allocator_gpus)


def objective_for(config: AllocatorConfig) -> Objective:
    """The objective and prices a use case asks for."""
    return Objective(
        kind=config.objective,
        deadline_s=config.deadline_s,
        budget=config.budget,
        pricing=Pricing(
            cpu_price=config.cpu_price,
            memory_price_per_gib=config.memory_price_per_gib,
            gpu_price_ratio=config.gpu_price_ratio,
        ),
    )


def plan_allocation(
    job: JobFeatures,
    config: AllocatorConfig,
    cluster: ClusterConfig,
    history: Sequence[RunProfile],
    resources: Resources,
    gpu_prior_speedup: float = 1.5,
) -> Allocation:
    """The allocation for one training run: recommended, or the fixed ``cluster`` (capped).

    Args:
        job: What is trained.
        config: The use case's allocator settings.
        cluster: The use case's fixed cluster, used as is when the allocator is disabled.
        history: Every recorded run.
        resources: What exists to choose from.
        gpu_prior_speedup: GPU speed-up assumed until GPU runs are measured.
    """
    if not config.enabled:
        return fixed_allocation(job, cluster, history, resources)
    shapes, notes = candidate_shapes(
        resources,
        config.max_workers,
        config.max_threads_per_worker,
        config.max_memory_per_worker,
        allow_gpu=config.use_gpu == "auto",
    )
    if resources.description:
        notes.insert(0, f"sized within {resources.description}")
    gpu_note = resources.gpu_note if config.use_gpu == "auto" else "use_gpu is 'never'"
    return recommend_allocation(
        job,
        history,
        shapes,
        objective_for(config),
        notes=notes,
        gpu_note=gpu_note,
        gpu_prior_speedup=gpu_prior_speedup,
        cores=resources.max_threads_per_worker if resources.backend == "local" else None,
    )


def fixed_allocation(
    job: JobFeatures, cluster: ClusterConfig, history: Sequence[RunProfile], resources: Resources
) -> Allocation:
    """The configured cluster, capped to what exists, with the model's predictions for it."""
    notes = ["allocator disabled (training.allocator.enabled: false): using training.cluster"]
    workers = min(cluster.n_workers, resources.max_workers)
    threads = min(cluster.threads_per_worker, resources.max_threads_per_worker)
    memory = parse_bytes(cluster.memory_limit)
    if resources.fixed_worker:  # an existing cluster's workers are the size they are
        threads = resources.max_threads_per_worker
        memory = resources.worker_memory_bytes
        notes.append(f"{workers} worker(s) of {resources.description}, at their own size")
    elif (workers, threads) != (cluster.n_workers, cluster.threads_per_worker):
        notes.append(
            f"training.cluster asks for {cluster.n_workers}x{cluster.threads_per_worker}; capped "
            f"at {workers}x{threads}, all the {resources.backend} cluster has"
        )
    if workers * memory > resources.memory_bytes:
        memory = resources.memory_bytes // workers
        notes.append(
            f"memory_limit {cluster.memory_limit} capped at {memory / 2**30:.1f} GiB per worker"
        )
    shape = ClusterShape(
        workers=workers, threads_per_worker=threads, memory_per_worker_bytes=memory
    )
    model = fit_model(
        history, resources.max_threads_per_worker if resources.backend == "local" else None
    )
    predicted = model.base_prediction(job, shape)
    return Allocation(
        **shape.model_dump(),
        predicted_wall_time_s=predicted.time_s,
        predicted_peak_memory_bytes=predicted.peak_memory_bytes,
        predicted_cost=predicted.time_s * Pricing().per_second(shape),
        confidence=0.0,
        confidence_label=confidence_label(0.0),
        objective="fixed by configuration",
        rationale=notes,
        history_runs=len(history),
    )
