"""Measure one training run on one cluster shape and turn it into a history row.

Used by the train stage (every pipeline run is recorded) and by the profiling sweep in
``benchmarks/allocator.py``. A run that fails is recorded too, with why: a worker the Dask
nanny restarted for exceeding its memory budget is ``out-of-memory``, a worker lost for
another reason is ``killed``, and a run past its time limit is ``timeout``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from prefect_mlops.mlops.config import ClusterConfig, TrainingConfig
from prefect_mlops.mlops.dask_workers import cluster_workers
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.families import ModelFamily

from .history import ClusterShape, JobFeatures, RunProfile, RunStatus

logger = logging.getLogger(__name__)

_MEMORY_LOGGERS = ("distributed.worker_memory", "distributed.nanny.memory", "distributed.nanny")


class TrainingOutcomeError(RuntimeError):
    """Training failed on its cluster; ``status`` says how (out-of-memory, killed, timeout)."""

    def __init__(self, status: RunStatus, message: str, elapsed_s: float) -> None:
        super().__init__(message)
        self.status = status
        self.elapsed_s = elapsed_s


def job_features(dataset: DatasetRef, training: TrainingConfig, family: ModelFamily) -> JobFeatures:
    """The allocator's view of a job: dataset meta-features plus the family's cost drivers."""
    meta = dataset.meta_features
    return JobFeatures(
        name=dataset.name,
        context=dataset.version,
        family=family.name,
        n_rows=max(meta.n_rows, 1),
        n_features=max(meta.n_features, 1),
        n_numeric=meta.n_numeric,
        n_categorical=meta.n_categorical,
        bytes_in_memory=max(meta.bytes_in_memory, 1),
        max_cardinality=meta.max_cardinality,
        mean_cardinality=meta.mean_cardinality,
        sparsity=min(max(meta.sparsity, 0.0), 1.0),
        task=meta.task,
        n_classes=meta.n_classes,
        **family.cost_drivers(training, dataset),
    )


def cluster_config(shape: ClusterShape, base: ClusterConfig) -> ClusterConfig:
    """The Dask cluster settings of a shape, keeping the base config's scheduler and timeout."""
    return base.model_copy(
        update={
            "n_workers": shape.workers,
            "threads_per_worker": shape.threads_per_worker,
            "memory_limit": str(shape.memory_per_worker_bytes),
        }
    )


class _MemoryKills(logging.Handler):
    """Counts the nanny's "exceeded N% memory budget" messages (it runs in this process)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "memory budget" in message:
            self.messages.append(message)


@contextmanager
def watch_memory_kills() -> Iterator[_MemoryKills]:
    """Collect the memory-budget restarts of local Dask workers while the block runs."""
    handler = _MemoryKills()
    watched = [logging.getLogger(name) for name in _MEMORY_LOGGERS]
    for log in watched:
        log.addHandler(handler)
    try:
        yield handler
    finally:
        for log in watched:
            log.removeHandler(handler)


def classify_failure(error: BaseException, memory_kills: list[str]) -> RunStatus:
    """Why a training run failed, from the error and the nanny's memory messages."""
    if memory_kills or isinstance(error, MemoryExhausted):
        return "out-of-memory"
    text = f"{type(error).__name__}: {error}".lower()
    if "memoryerror" in text or "out of memory" in text or "memory budget" in text:
        return "out-of-memory"
    if isinstance(error, TimeoutError):
        return "timeout"
    if any(word in text for word in ("killedworker", "commclosed", "worker", "lost")):
        return "killed"
    return "failed"


class MemoryExhausted(RuntimeError):
    """A worker reached Dask's pause threshold (it stops taking tasks, so the run stalls)."""


class WorkerLost(RuntimeError):
    """A worker the run trained on died or left the cluster."""


def worker_lost(worker: str, cause: BaseException | None = None) -> WorkerLost:
    """The error for a run whose worker left the cluster, with the error it caused, if any."""
    seen = f" ({type(cause).__name__}: {cause})" if cause else ""
    return WorkerLost(
        f"worker {worker} left the Dask cluster mid-training; training cannot finish "
        f"without it{seen}"
    )


def lost_workers(client: Any, workers: list[str] | None) -> list[str]:
    """Those of ``workers`` the scheduler no longer has."""
    if not workers:
        return []
    present = cluster_workers(client)
    return [worker for worker in workers if worker not in present]


def wait_for_lost_workers(
    client: Any, workers: list[str] | None, grace_s: float = 3.0
) -> list[str]:
    """The run's workers that left the cluster, allowing the scheduler ``grace_s`` to notice.

    When a worker dies, its peers' sockets can fail a moment before the scheduler removes it.
    """
    deadline = time.monotonic() + grace_s
    while True:
        lost = lost_workers(client, workers)
        if lost or not workers or time.monotonic() >= deadline:
            return lost
        time.sleep(0.2)


def paused_workers(client: Any) -> list[str]:
    """Workers the scheduler reports as paused for memory."""
    workers = cluster_workers(client)
    return [address for address, info in workers.items() if info.get("status") == "paused"]


def run_watched(
    action: Callable[[], Any],
    client: Any,
    memory_kills: list[str],
    timeout_s: float | None,
    poll_s: float = 0.5,
    workers: list[str] | None = None,
) -> Any:
    """Run ``action`` in a thread and watch its cluster while it runs.

    Args:
        workers: The workers the action trains on; one of them leaving the cluster fails the
            run at once (LightGBM's fixed machine list and XGBoost's collective cannot go on without it).

    Raises:
        MemoryExhausted: a worker paused for memory or was restarted by its nanny.
        WorkerLost: a worker of ``workers`` left the cluster (also when the action's own
            error, e.g. LightGBM's socket error on a survivor, came first).
        TimeoutError: the action ran past ``timeout_s``.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = action()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="allocator-watched-training", daemon=True)
    started = time.monotonic()
    thread.start()
    while thread.is_alive():
        thread.join(poll_s)
        if not thread.is_alive():
            break
        if memory_kills:
            raise MemoryExhausted(memory_kills[0])
        lost = lost_workers(client, workers)
        if lost:
            raise worker_lost(lost[0])
        paused = paused_workers(client)
        if paused:
            raise MemoryExhausted(
                f"worker {paused[0]} paused: its memory reached Dask's pause threshold"
            )
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TimeoutError(f"training did not finish within {timeout_s:.0f}s")
    if "error" in outcome:
        lost = wait_for_lost_workers(client, workers)  # a dying peer's socket error comes first
        if lost:
            raise worker_lost(lost[0], outcome["error"]) from outcome["error"]
        raise outcome["error"]
    return outcome.get("value")


def host_cpus() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def profile_row(
    job: JobFeatures,
    shape: ClusterShape,
    *,
    use_case: str,
    dataset_version: str,
    status: RunStatus,
    startup_s: float,
    wall_time_s: float,
    iterations: int = 0,
    peak_memory_bytes: int | None = None,
    final_metric: float | None = None,
    metric_name: str | None = None,
    backend: str = "local",
    source: str = "pipeline",
    predicted: tuple[float, int] | None = None,
) -> RunProfile:
    """A history row for one measured run."""
    return RunProfile(
        **job.model_dump(),
        **shape.model_dump(),
        use_case=use_case,
        dataset_version=dataset_version,
        backend=backend,
        host_cpus=host_cpus(),
        status=status,
        startup_s=startup_s,
        wall_time_s=wall_time_s,
        iterations=iterations,
        time_per_iteration_s=wall_time_s / iterations if iterations else None,
        peak_memory_bytes=peak_memory_bytes or None,  # 0: not measured
        final_metric=final_metric,
        metric_name=metric_name,
        source=source,
        predicted_wall_time_s=predicted[0] if predicted else None,
        predicted_peak_memory_bytes=predicted[1] if predicted else None,
    )


class Trained(Protocol):
    """What a training callable returns: anything that knows how long its training took."""

    wall_time_s: float


T = TypeVar("T", bound=Trained)
TrainOnCluster = Callable[[Any, TrainingConfig, "list[str] | None"], T]
"""Training work handed to :func:`measure_training`: (client, config, workers) -> result."""


def measure_training(
    train: TrainOnCluster[T],
    training: TrainingConfig,
    shape: ClusterShape,
    *,
    timeout_s: float | None = None,
    scheduler_address: str | None = None,
    cluster_kind: str = "local",
) -> tuple[T, float, float]:
    """Run ``train`` on a cluster of ``shape`` and time it.

    On an existing scheduler the run gets ``shape.workers`` of its workers; on a LocalCluster
    or KubeCluster, a cluster of that shape is built for it.

    Args:
        train: The training work (the train stage passes its family's trainer), given the
            client, the config with the shape's cluster and the workers to train on (None:
            all of the client's).
        training: The training config; its cluster is replaced by the shape's.
        shape: The cluster to build (or take workers from).
        timeout_s: Fail the run as ``timeout`` past this many seconds.
        scheduler_address: An existing scheduler to take workers from.
        cluster_kind: ``local`` or ``kubernetes`` when a cluster is built.

    Returns:
        What ``train`` returned, the cluster start-up seconds and the training seconds.

    Raises:
        TrainingOutcomeError: when training fails, with the failure's status and elapsed time.
    """
    from prefect_mlops.infra.dask_cluster import dask_client, restart_survivors, select_workers

    cluster = cluster_config(shape, training.cluster)
    config = training.model_copy(update={"cluster": cluster})
    started = time.perf_counter()
    startup = 0.0
    with watch_memory_kills() as kills:
        try:
            with dask_client(cluster, scheduler_address, cluster_kind) as client:
                workers = select_workers(client, shape.workers) if scheduler_address else None
                startup = time.perf_counter() - started
                try:
                    trained = run_watched(
                        lambda: train(client, config, workers),
                        client,
                        kills.messages,
                        timeout_s,
                        workers=workers,
                    )
                except WorkerLost:
                    restart_survivors(client, workers or [])
                    raise
        except Exception as error:
            elapsed = time.perf_counter() - started - startup
            status = classify_failure(error, kills.messages)
            detail = kills.messages[0] if kills.messages else f"{type(error).__name__}: {error}"
            raise TrainingOutcomeError(status, detail, elapsed) from error
    return trained, startup, trained.wall_time_s
