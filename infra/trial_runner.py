"""Running a search's trials on a Dask cluster: side by side on its workers, or on all of it.

A :class:`~mlops.tuning.Search` is driven here the way its plan says
(:mod:`infra.allocator.trials`):

- per worker: each trial is one Dask task, pinned to a free worker, that reads the splits and
  trains in the worker's process on its threads (:func:`mlops.tuning.trial.run_trial`); as
  soon as one finishes, the next is asked for and goes to that worker;
- whole cluster: one trial at a time through the family's Dask trainer, watched like the
  candidate's training (memory, lost workers).

A trial that fails, runs out of memory or loses its worker is told as such and the search goes
on (a LocalCluster's nanny restarts a worker it killed for memory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from distributed import Client, Future, wait

from prefect_mlops.infra.allocator.profiling import (
    classify_failure,
    run_watched,
    watch_memory_kills,
)
from prefect_mlops.mlops.dask_workers import cluster_workers
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.families import ModelFamily
from prefect_mlops.mlops.training_config import TrainingConfig
from prefect_mlops.mlops.tuning.search import (
    PendingTrial,
    Search,
    SearchResult,
    TrialOutcome,
    TrialRecord,
)
from prefect_mlops.mlops.tuning.trial import run_trial

logger = logging.getLogger(__name__)

OnTrial = Callable[[TrialRecord], None]


def current_workers(client: Client) -> list[str]:
    """The addresses of the cluster's workers now."""
    return sorted(cluster_workers(client))


def _refill(client: Client, count: int, busy: set[str], grace_s: float = 30.0) -> list[str]:
    """Free workers after a loss: the cluster's workers not busy with a trial, at most ``count``
    (waiting up to ``grace_s`` for a nanny to bring a killed worker back)."""
    deadline = time.monotonic() + grace_s
    while True:
        free = [w for w in current_workers(client) if w not in busy][: max(count - len(busy), 0)]
        if free or time.monotonic() >= deadline:
            return free
        time.sleep(0.5)


def _lost_outcome(
    error: BaseException, worker: str, submitted: datetime, threads: int, kills: list[str]
) -> TrialOutcome:
    """The outcome of a trial whose task did not return (its worker died, mostly)."""
    mine = [message for message in kills if worker in message]
    ended = datetime.now(UTC)
    return TrialOutcome(
        status=classify_failure(error, mine),
        wall_time_s=(ended - submitted).total_seconds(),
        threads=threads,
        started_at=submitted,
        ended_at=ended,
        where=worker,
        error=(mine[0] if mine else f"{type(error).__name__}: {error}")[:2000],
    )


def run_per_worker(
    client: Client,
    search: Search,
    workers: list[str],
    family_name: str,
    dataset: DatasetRef,
    threads: int,
    options: Mapping[str, Any],
    on_trial: OnTrial,
) -> SearchResult:
    """Run the search's trials as Dask tasks, one per worker at a time.

    Args:
        client: A client of the cluster.
        search: The search to drive.
        workers: The workers the trials may use (one trial each at a time).
        family_name: The model family that trains.
        dataset: The dataset version.
        threads: Threads per trial (the workers' threads).
        options: The artifact store's options, resolved here for the workers.
        on_trial: Called with each trial's record as soon as it is told.
    """
    running: dict[Future, tuple[PendingTrial, str, datetime]] = {}
    free = list(workers)
    with watch_memory_kills() as kills:
        while True:
            while free and (pending := search.ask()) is not None:
                worker = free.pop(0)
                future = client.submit(
                    run_trial,
                    family_name,
                    dataset,
                    pending.training,
                    threads,
                    options,
                    workers=[worker],
                    allow_other_workers=True,  # never stuck behind a worker that died
                    pure=False,
                    key=f"tuning-trial-{search.search_id[:8]}-{pending.number}",
                )
                running[future] = (pending, worker, datetime.now(UTC))
            if not running:
                return search.result()
            done, _ = wait(list(running), return_when="FIRST_COMPLETED")
            lost = False
            for future in done:
                pending, worker, submitted = running.pop(future)
                try:
                    outcome = future.result().model_copy(update={"where": worker})
                except Exception as error:  # the worker died under it (memory, a kill)
                    outcome = _lost_outcome(error, worker, submitted, threads, kills.messages)
                    lost = True
                else:
                    free.append(worker)
                on_trial(search.tell(pending, outcome))
            if lost:
                busy = {worker for _, worker, _ in running.values()}
                free = _refill(client, len(workers), busy)


def run_on_whole_cluster(
    client: Client,
    search: Search,
    workers: list[str] | None,
    model_family: ModelFamily,
    dataset: DatasetRef,
    for_cluster: Callable[[TrainingConfig], TrainingConfig],
    work_uri: str,
    on_trial: OnTrial,
) -> SearchResult:
    """Run the search's trials one at a time with the family's Dask trainer on every worker.

    Args:
        client: A client of the cluster.
        search: The search to drive.
        workers: The workers to train on (None: all of the client's).
        model_family: The family that trains.
        dataset: The dataset version.
        for_cluster: A trial's config made ready for the cluster (its shape, a GPU).
        work_uri: Scratch space; each trial writes under ``trial-<n>/``.
        on_trial: Called with each trial's record as soon as it is told.
    """
    threads = sum(
        info["nthreads"]
        for address, info in cluster_workers(client).items()
        if workers is None or address in workers
    )
    with watch_memory_kills() as kills:
        while (pending := search.ask()) is not None:
            kills.messages.clear()
            started_at, started = datetime.now(UTC), time.perf_counter()
            config = for_cluster(pending.training)
            uri = f"{work_uri.rstrip('/')}/trial-{search.search_id[:8]}-{pending.number}"
            common = {"threads": max(threads, 1), "started_at": started_at, "where": "cluster"}
            try:
                trained = run_watched(
                    lambda config=config, uri=uri, chosen=workers: model_family.train(
                        client, dataset, config, uri, chosen
                    ),
                    client,
                    kills.messages,
                    None,
                    workers=workers,
                )
            except Exception as error:
                status = classify_failure(error, kills.messages)
                detail = kills.messages[0] if kills.messages else f"{type(error).__name__}: {error}"
                outcome = TrialOutcome(
                    status=status,
                    wall_time_s=time.perf_counter() - started,
                    ended_at=datetime.now(UTC),
                    error=detail[:2000],
                    **common,
                )
                if workers:  # a lost worker is replaced by another idle one
                    workers = _refill(client, len(workers), set())
            else:
                curve = trained.validation_curve
                outcome = TrialOutcome(
                    status="success",
                    validation_loss=curve[trained.best_iteration - 1] if curve else None,
                    best_iteration=trained.best_iteration,
                    wall_time_s=time.perf_counter() - started,
                    ended_at=datetime.now(UTC),
                    **common,
                )
            on_trial(search.tell(pending, outcome))
    return search.result()
