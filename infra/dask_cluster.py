"""Dask clusters for training: a LocalCluster on loopback, or an existing scheduler by address."""

from __future__ import annotations

import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from mlops.config import ClusterConfig

logger = logging.getLogger(__name__)


@contextmanager
def dask_client(cluster: ClusterConfig, default_scheduler: str | None = None) -> Iterator[Client]:
    """A Dask client for one training run, closed (and its LocalCluster stopped) afterwards.

    Args:
        cluster: Workers, threads and memory for a LocalCluster, or ``scheduler_address``.
        default_scheduler: Scheduler from settings (``MLOPS_DASK_SCHEDULER_ADDRESS``), used when
            the config names none.

    Yields:
        A connected client.
    """
    address = cluster.scheduler_address or default_scheduler
    if address:
        logger.info("Connecting to the Dask scheduler at %s", address)
        with Client(address, timeout="30s") as client:
            yield client
        return
    logger.info(
        "Starting a LocalCluster: %d worker(s) x %d thread(s), %s each",
        cluster.n_workers,
        cluster.threads_per_worker,
        cluster.memory_limit,
    )
    # A LightGBM part cannot be retried on another worker (the machine list is fixed), so a
    # lost worker fails the run at once instead of hanging the others until their time_out.
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # not Linux


def worker_peak_memory(client: Client) -> dict[str, int]:
    """Peak resident memory of each worker process since it started, in bytes."""
    return client.run(_peak_rss_bytes)
