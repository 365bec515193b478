"""Memory safety: which shapes a job must not get because it would run out of memory or fail.

A shape is ruled out when this very job already failed on it, when a job at least as heavy per
worker ran out of memory with at most as much memory, or when the predicted peak (boosting jobs
only) times a learned margin is over the share of the limit past runs show is safe. A job that
already succeeded on as little memory with as much data per worker is never ruled out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .allocation import GIB, Objective
from .history import ClusterShape, JobFeatures, RunProfile
from .model import PAUSE_FRACTION, Prediction, safe_fraction, same_shape


def memory_is_modelled(job: JobFeatures) -> bool:
    """Whether the memory model may filter shapes for ``job``: its form is the boosting families' (a base
    plus multiples of each worker's share of the data), fitted on their runs. For other jobs
    memory is not predicted, and only failures rule shapes out."""
    return job.is_boosting


def memory_exclusion(
    job: JobFeatures,
    shape: ClusterShape,
    prediction: Prediction,
    runs: Sequence[RunProfile],
    objective: Objective,
    spread: float = 0.15,
    *,
    modelled: bool = True,
) -> str | None:
    """Why ``shape`` would run out of memory, or None when it looks safe.

    A past out-of-memory run rules out every shape that gives each worker at least as much
    data and as many threads with at most as much memory; otherwise the predicted peak, times
    a margin, must stay under the share of the limit that past runs show is safe. The margin is learned: two standard deviations of the memory
    model's error on similar jobs (``spread``, in log terms), and more after failures it
    underestimated.
    """
    per_worker = (job.bytes_in_memory or 0) / shape.workers
    for run in runs:
        if run.status != "out-of-memory" or run.gpu != shape.gpu or not run.bytes_in_memory:
            continue
        heavier = per_worker >= 0.9 * run.bytes_in_memory / run.workers
        heavier = heavier and shape.threads_per_worker >= run.threads_per_worker
        if heavier and shape.memory_per_worker_bytes <= run.memory_per_worker_bytes:
            return (
                f"a job with {run.bytes_in_memory / run.workers / 2**20:.0f} MiB per worker "
                f"ran out of memory at {run.memory_per_worker_bytes / GIB:.2g} GiB "
                f"({run.use_case}, {run.shape.label()})"
            )
    if not modelled or ran_on_as_little(job, shape, runs):
        return None
    margin = objective.memory_margin * math.exp(2 * spread) * failure_margin(runs)
    fraction = safe_fraction(runs)
    needed = prediction.peak_memory_bytes * margin / fraction
    if needed > shape.memory_per_worker_bytes:
        return (
            f"predicted peak {prediction.peak_memory_bytes / 2**20:.0f} MiB x margin "
            f"{margin:.2f} is over {fraction:.0%} of {shape.memory_per_worker_bytes / GIB:.2g} GiB"
        )
    return None


def failed_before(job: JobFeatures, shape: ClusterShape, runs: Sequence[RunProfile]) -> str | None:
    """Why this very job and input would fail again on ``shape``: it failed there and never
    succeeded there."""
    if job.program is None:
        return None
    outcomes = [
        r.status
        for r in runs
        if r.program == job.program
        and (r.dataset_version or "") == (job.context or "")
        and same_shape(r.shape, shape)
    ]
    if outcomes and "success" not in outcomes and any(o in ("failed", "killed") for o in outcomes):
        return f"this job failed on {shape.label()} before ({len(outcomes)} run(s), none succeeded)"
    return None


def ran_on_as_little(job: JobFeatures, shape: ClusterShape, runs: Sequence[RunProfile]) -> bool:
    """Whether this job already succeeded with at most ``shape``'s memory per worker while
    holding at least as much data per worker (same input when its size is unknown)."""
    for run in runs:
        if run.status != "success" or run.program != job.program or run.gpu != shape.gpu:
            continue
        if run.memory_per_worker_bytes > shape.memory_per_worker_bytes:
            continue
        if run.threads_per_worker < shape.threads_per_worker:
            continue
        if job.bytes_in_memory and run.bytes_in_memory:
            if run.bytes_in_memory / run.workers >= job.bytes_in_memory / shape.workers:
                return True
        elif run.dataset_version == job.context and run.workers <= shape.workers:
            return True
    return False


def failure_margin(runs: Sequence[RunProfile]) -> float:
    """Extra memory margin after failures: how far the memory model underestimated them."""
    worst = 1.0
    for run in runs:
        if run.status != "out-of-memory" or not run.predicted_peak_memory_bytes:
            continue
        # The run reached the pause mark at least, so its peak was at least this.
        floor = PAUSE_FRACTION * run.memory_per_worker_bytes
        worst = max(worst, floor / run.predicted_peak_memory_bytes)
    return min(worst, 3.0)
