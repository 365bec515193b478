"""The workers of a Dask cluster, as its scheduler has them now."""

from __future__ import annotations

from typing import Any


def cluster_workers(client: Any) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler has now, by address, asked of the scheduler itself.

    Not ``client.scheduler_info(n_workers=-1)``: that refreshes the client's cached identity and
    returns the cache, which the client's periodic refresh (every 2 s) overwrites with one that
    lists no workers. Read in between, a cluster of three workers looks empty, and a training
    run took its workers for lost (seen in tests/integration/test_dask_cluster.py).
    """
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]
