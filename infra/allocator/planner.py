"""The allocator's entry points for the pipeline and the CLI: plan a run, record its outcome."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dask.utils import parse_bytes
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from prefect_mlops.infra.dask_cluster import scheduler_workers
from prefect_mlops.mlops.config import AllocatorConfig, ClusterConfig
from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.settings import Settings

from .allocation import Allocation, Objective, Pricing
from .history import ClusterShape, HistoryStore, JobFeatures, RunProfile
from .machines import Catalogue, CatalogueError, catalogue_for, default_catalogue
from .model import fit_model
from .recommend import confidence_label, recommend_allocation
from .resources import (
    Resources,
    candidate_shapes,
    cluster_resources,
    existing_cluster_resources,
    local_resources,
    machine_shapes,
    node_counts,
)


def open_history(settings: Settings) -> HistoryStore:
    """The run history named by settings (SQLite under ``.mlops/`` by default)."""
    return HistoryStore(settings.resolved_history_url)


def recorded_runs(settings: Settings) -> list[RunProfile]:
    """Every run in the history named by settings."""
    store = open_history(settings)
    try:
        return store.runs()
    finally:
        store.close()


def open_catalogue(settings: Settings) -> Catalogue:
    """The machine catalogue: built-in types, extended by ``MLOPS_ALLOCATOR_MACHINES``."""
    return catalogue_for(settings.allocator_machines)


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
    catalogue: Catalogue | None = None,
) -> Allocation:
    """The allocation for one training run: recommended, or the fixed ``cluster`` (capped).

    Args:
        job: What is trained.
        config: The use case's allocator settings.
        cluster: The use case's fixed cluster, used as is when the allocator is disabled.
        history: Every recorded run.
        resources: What exists to choose from.
        gpu_prior_speedup: GPU speed-up assumed until GPU runs are measured.
        catalogue: Machine types, for a use case that names them (``machine_types``).
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
    if config.machine_types and resources.backend == "kubernetes":
        counts = node_counts(config.nodes, config.min_nodes, config.max_nodes)
        catalogue = catalogue or default_catalogue()
        shapes = machine_shapes(
            catalogue, config.machine_types, counts, allow_gpu=config.use_gpu == "auto"
        )
        notes = [f"node counts {counts[0]}..{counts[-1]} of {', '.join(config.machine_types)}"]
    elif config.machine_types:
        notes.append(
            f"machine_types apply to a KubeCluster; the {resources.backend} cluster's workers "
            "are sized instead"
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
        catalogue=catalogue,
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


LIGHTGBM_KEYS = {
    "n_numeric",
    "n_categorical",
    "max_cardinality",
    "mean_cardinality",
    "sparsity",
    "task",
    "n_classes",
    "n_estimators",
    "num_leaves",
    "max_bin",
    "learning_rate",
    "early_stopping_rounds",
}
"""What ``--job``'s ``lightgbm`` object may hold: the cost model's parameters."""


class JobDescription(BaseModel):
    """A job described without its data, for ``mlops recommend --job``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = Field(default=None, description="The job as the history names it.")
    context: str | None = Field(default=None, description="Its input, e.g. a dataset version.")
    family: str | None = Field(default=None, description="lightgbm, spark, hadoop, ...")
    bytes: int | None = Field(default=None, ge=1, description="Input size in bytes.")
    rows: int | None = Field(default=None, ge=1)
    features: int | None = Field(default=None, ge=1)
    params: dict[str, Any] = Field(default_factory=dict)
    lightgbm: dict[str, Any] = Field(
        default_factory=dict,
        description="n_estimators, num_leaves, max_bin, ... for the LightGBM cost model.",
    )

    @field_validator("lightgbm")
    @classmethod
    def _lightgbm_fields_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - LIGHTGBM_KEYS)
        if unknown:
            raise ValueError(
                f"unknown key(s) {unknown}; it takes {', '.join(sorted(LIGHTGBM_KEYS))} (rows, "
                "bytes and features go at the top level)"
            )
        return value

    @model_validator(mode="after")
    def _sized(self) -> JobDescription:
        if self.bytes is None and self.rows is None:
            raise ValueError(
                "field 'bytes' (or 'rows') is required: the allocator scales by input size"
            )
        return self

    def job(self) -> JobFeatures:
        """The allocator's view of the described job."""
        return JobFeatures(
            name=self.name,
            context=self.context,
            family=self.family,
            bytes_in_memory=self.bytes,
            n_rows=self.rows,
            n_features=self.features,
            params=self.params,
            **self.lightgbm,
        )


def describe_job(raw: dict[str, Any], origin: str) -> JobFeatures:
    """Check a job description (a JSON object or flags) and return the job.

    Raises:
        ConfigError: naming ``origin`` and the field that is wrong or missing.
    """
    try:
        return JobDescription.model_validate(raw).job()
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        where = f"field '{field}' " if field else ""
        raise ConfigError(f"{origin}: {where}{message}") from None


def recommend_for_job(
    job: JobFeatures,
    settings: Settings,
    objective: Objective,
    machine_types: Sequence[str] = (),
    counts: Sequence[int] = (),
) -> Allocation:
    """Recommend a cluster for a described job: node counts x machine types when given, else
    the cluster the settings describe (this machine by default) with up to ``max(counts)``
    workers."""
    history = recorded_runs(settings)
    catalogue = open_catalogue(settings)
    if machine_types:
        try:
            shapes = machine_shapes(catalogue, list(machine_types), list(counts) or node_counts())
        except CatalogueError as error:
            raise CatalogueError(f"Candidate machine types: {error}") from None
        notes = [f"candidates: {len(shapes)} shape(s) of {', '.join(machine_types)}"]
        cores = None
    else:
        resources = resources_for(ClusterConfig(), settings)
        shapes, notes = candidate_shapes(resources, max(counts) if counts else None)
        if counts:
            shapes = [s for s in shapes if s.workers in set(counts)]
        cores = resources.max_threads_per_worker if resources.backend == "local" else None
    return recommend_allocation(
        job,
        history,
        shapes,
        objective,
        notes=notes,
        gpu_prior_speedup=settings.allocator_gpu_prior_speedup,
        cores=cores,
        catalogue=catalogue,
    )


def node_spec(spec: Any) -> list[int]:
    """``4-48``, ``4,6,8`` or a list into node counts ([] for none given: the default range).

    Raises:
        ConfigError: naming the spec and the forms it may take.
    """
    if spec is None:
        return []
    try:
        if isinstance(spec, list):
            numbers = [int(n) for n in spec]
        else:
            text = str(spec).strip()
            parts = text.split("-", 1) if "-" in text else text.split(",")
            numbers = [int(part) for part in parts]
    except (TypeError, ValueError):
        raise ConfigError(
            f"--nodes {spec!r}: expected node counts such as 4-48 or 4,6,8."
        ) from None
    try:
        if isinstance(spec, str) and "-" in spec:
            return node_counts(None, numbers[0], numbers[1])
        return node_counts(numbers)
    except ValueError as error:
        raise ConfigError(f"--nodes {spec!r}: {error}.") from None


def described_objective(kind: str, deadline: float | None, budget: float | None) -> Objective:
    """The objective of ``mlops recommend``'s flags.

    Raises:
        ConfigError: naming the flag that is wrong.
    """
    try:
        return Objective(kind=kind, deadline_s=deadline, budget=budget)
    except ValidationError as error:
        first = error.errors()[0]
        flag = {"kind": "objective", "deadline_s": "deadline"}.get(first["loc"][0], "budget")
        raise ConfigError(f"--{flag}: {first['msg']}") from None
