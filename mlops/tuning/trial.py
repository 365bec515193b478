"""Running one trial in this process: read the splits, train with the family, time it.

:func:`run_trial` is what a Dask worker runs for a trial that trains on one worker (the train
stage submits it), and what the benchmark calls in-process. It never raises for a trial that
fails: the outcome says how it failed, so the search can go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.families import TrialResult, family
from prefect_mlops.mlops.storage import open_url
from prefect_mlops.mlops.training_config import TrainingConfig

from .search import TrialOutcome
from .warm_start import TrialStatus

_OUT_OF_MEMORY = ("memoryerror", "bad_alloc", "out of memory", "cannot allocate memory")


def loss_name(task: str) -> str:
    """The validation loss of a task's trials: ``rmse`` for regression, else ``log_loss``."""
    return "rmse" if task == "regression" else "log_loss"


def failure_status(error: BaseException) -> TrialStatus:
    """How a trial failed: ``out-of-memory`` when memory ran out, else ``failed``."""
    text = f"{type(error).__name__}: {error}".lower()
    if isinstance(error, MemoryError) or any(word in text for word in _OUT_OF_MEMORY):
        return "out-of-memory"
    return "failed"


def timed_outcome(train: Callable[[], TrialResult], threads: int) -> TrialOutcome:
    """Run ``train`` and time it; an error becomes a failed outcome with its status and text."""
    started_at = datetime.now(UTC)
    started = time.perf_counter()
    try:
        result = train()
    except Exception as error:  # a failed trial is a result of the search, not its end
        return TrialOutcome(
            status=failure_status(error),
            wall_time_s=time.perf_counter() - started,
            threads=threads,
            started_at=started_at,
            ended_at=datetime.now(UTC),
            error=f"{type(error).__name__}: {error}"[:2000],
        )
    return TrialOutcome(
        status="success",
        validation_loss=result.validation_loss,
        best_iteration=result.best_iteration,
        wall_time_s=time.perf_counter() - started,
        threads=threads,
        started_at=started_at,
        ended_at=datetime.now(UTC),
    )


def read_trial_frames(
    dataset: DatasetRef, options: Mapping[str, Any] | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The training and validation splits as read from the store (``options``: the store's
    options resolved by the caller, so a worker need not read the settings)."""
    frames = []
    for split in ("train", "validation"):
        fs, path = open_url(dataset.split_uris[split], options)
        frames.append(pd.read_parquet(path, filesystem=fs))
    return frames[0], frames[1]


def run_trial(
    family_name: str,
    dataset: DatasetRef,
    training: TrainingConfig,
    threads: int,
    options: Mapping[str, Any] | None = None,
) -> TrialOutcome:
    """One trial in this process: read the splits, train on ``threads`` threads, time it all.

    Args:
        family_name: The model family that trains.
        dataset: The dataset version.
        training: The trial's config.
        threads: Threads to train on.
        options: The artifact store's options (None: read from the settings).

    Returns:
        The outcome; a failure is an outcome, never an exception.
    """

    def train() -> TrialResult:
        train_frame, validation_frame = read_trial_frames(dataset, options)
        return family(family_name).train_trial(
            train_frame, validation_frame, dataset, training, threads
        )

    return timed_outcome(train, threads)
