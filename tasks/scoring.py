"""Batch scoring as a Prefect task: the version the request names scores its data."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from prefect_mlops.serving.batch import BatchScoreRequest, BatchScoreResult, run_batch_score


@task(name="score-batch", cache_policy=NO_CACHE)
def score_batch_task(request: BatchScoreRequest) -> BatchScoreResult:
    """Score ``request.data`` with the model version it names (see :mod:`serving.batch`)."""
    return run_batch_score(request)
