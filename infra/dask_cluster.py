"""Dask clusters for training: a LocalCluster on loopback, an existing scheduler by address, or a
KubeCluster (dask-kubernetes' operator) per run, chosen by settings (``MLOPS_DASK_CLUSTER``)."""

from __future__ import annotations

import logging
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from dask.utils import parse_bytes
from distributed import Client, LocalCluster

from prefect_mlops.mlops.config import ClusterConfig
from prefect_mlops.mlops.dask_workers import cluster_workers
from prefect_mlops.mlops.errors import ExitCode, MlopsError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = "30s"


class ClusterUnavailable(MlopsError):
    """The configured Dask cluster cannot be reached or cannot run the job."""

    exit_code = ExitCode.ENVIRONMENT


def scheduler_workers(address: str) -> list[dict]:
    """What each worker of an existing scheduler reports now: threads, memory, resources...

    Raises:
        ClusterUnavailable: when the scheduler does not answer within 30 s.
    """
    try:  # not the default client: it must not change dask's scheduler for this process
        with Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
            workers = cluster_workers(client)
    except (OSError, TimeoutError) as error:
        raise ClusterUnavailable(
            f"The Dask scheduler at {address} (MLOPS_DASK_SCHEDULER_ADDRESS) did not answer: "
            f"{error}"
        ) from error
    return [workers[worker] for worker in sorted(workers)]


def select_workers(client: Client, count: int) -> list[str]:
    """The ``count`` workers of an existing cluster a run trains on: idle ones, most memory first.

    Raises:
        ClusterUnavailable: when the cluster has fewer workers than the allocation planned
            (some left between planning and training).
    """
    workers = cluster_workers(client)
    busy = {worker for worker, tasks in client.processing().items() if tasks}
    ranked = sorted(workers, key=lambda a: (a in busy, -(workers[a].get("memory_limit") or 0), a))
    if len(ranked) < count:
        raise ClusterUnavailable(
            f"The allocation planned {count} worker(s) but the cluster has {len(ranked)} now."
        )
    return ranked[:count]


def restart_survivors(client: Client, workers: list[str]) -> None:
    """Restart the run's workers that are still there after one of them died.

    Their training parts stay blocked on the dead peer (connect retries, then the network
    time-out: ``ClusterConfig.network_timeout_minutes``),
    holding the worker's threads for minutes; a restart (through each worker's nanny) frees
    them for the next run. Workers without a nanny cannot be restarted: that is logged.
    """
    present = cluster_workers(client)
    alive = [worker for worker in workers if worker in present]
    if not alive:
        return
    try:
        client.restart_workers(alive, timeout=60)
        logger.warning("Restarted worker(s) %s, left blocked by the lost peer", ", ".join(alive))
    except Exception as error:  # no nanny, or it did not come back in time
        logger.warning(
            "Could not restart worker(s) %s (%s): they stay busy until LightGBM's time_out",
            ", ".join(alive),
            error,
        )


@contextmanager
def dask_client(
    cluster: ClusterConfig, default_scheduler: str | None = None, kind: str = "local"
) -> Iterator[Client]:
    """A Dask client for one training run, closed (and its own cluster stopped) afterwards.

    Args:
        cluster: Workers, threads and memory for a LocalCluster or KubeCluster, or
            ``scheduler_address``.
        default_scheduler: Scheduler from settings (``MLOPS_DASK_SCHEDULER_ADDRESS``), used when
            the config names none.
        kind: ``local`` or ``kubernetes`` (settings' ``dask_cluster``) when there is no scheduler.

    Yields:
        A connected client.
    """
    address = cluster.scheduler_address or default_scheduler
    if address:
        logger.info("Connecting to the Dask scheduler at %s", address)
        with Client(address, timeout=CONNECT_TIMEOUT) as client:
            yield client
        return
    if kind == "kubernetes":
        with kube_cluster(cluster) as kube, Client(kube) as client:
            yield client
        return
    logger.info(
        "Starting a LocalCluster: %d worker(s) x %d thread(s), %s each",
        cluster.n_workers,
        cluster.threads_per_worker,
        cluster.memory_limit,
    )
    # A distributed training part cannot be retried on another worker (the machine list is
    # fixed), so a lost worker fails the run at once instead of hanging the others until their
    # network time-out.
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        LocalCluster(
            n_workers=cluster.n_workers,
            threads_per_worker=cluster.threads_per_worker,
            memory_limit=cluster.memory_limit,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as local,
        Client(local) as client,
    ):
        yield client


def kube_cluster_spec(cluster: ClusterConfig, image: str | None) -> dict:
    """The DaskCluster resource for one run: the allocated workers, threads and memory.

    Raises:
        ClusterUnavailable: without an image (``MLOPS_DASK_KUBERNETES_IMAGE``).
    """
    from dask_kubernetes.operator import make_cluster_spec

    if not image:
        raise ClusterUnavailable(
            "MLOPS_DASK_CLUSTER=kubernetes needs MLOPS_DASK_KUBERNETES_IMAGE (the train-cpu image)."
        )
    threads, memory = str(cluster.threads_per_worker), str(parse_bytes(cluster.memory_limit))
    size = {"cpu": threads, "memory": memory}  # bytes: Kubernetes does not read "4GiB"
    return make_cluster_spec(
        name="mlops-train",
        image=image,
        n_workers=cluster.n_workers,
        resources={"requests": size, "limits": size},
        worker_command=["dask-worker", "--nthreads", threads, "--memory-limit", memory],
    )


@contextmanager
def kube_cluster(cluster: ClusterConfig) -> Iterator[object]:
    """A KubeCluster of the allocated shape for one run (the Dask operator), deleted afterwards."""
    from dask_kubernetes.operator import KubeCluster

    from prefect_mlops.mlops.settings import get_settings

    settings = get_settings()
    spec = kube_cluster_spec(cluster, settings.dask_kubernetes_image)
    logger.info(
        "Creating a KubeCluster: %d worker(s) x %d thread(s), %s each",
        cluster.n_workers,
        cluster.threads_per_worker,
        cluster.memory_limit,
    )
    kube = KubeCluster(
        custom_cluster_spec=spec,
        namespace=settings.dask_kubernetes_namespace,
        shutdown_on_close=True,
    )
    try:
        yield kube
    finally:
        kube.close()


def _peak_rss_bytes() -> int:
    # VmHWM is this process's own peak. ru_maxrss is not: Linux carries the parent's peak
    # across fork and exec, so a worker spawned by a big driver would report the driver's.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return max_rss_bytes(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # not Linux


def max_rss_bytes(ru_maxrss: int, platform: str = sys.platform) -> int:
    """getrusage's ``ru_maxrss`` in bytes: macOS reports bytes, Linux and the BSDs kibibytes."""
    return ru_maxrss if platform == "darwin" else ru_maxrss * 1024


def worker_peak_memory(client: Client, workers: list[str] | None = None) -> dict[str, int]:
    """Peak resident memory of each worker process (of ``workers``, or all), in bytes."""
    return client.run(_peak_rss_bytes, workers=workers)
