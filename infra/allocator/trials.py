"""How a hyperparameter search uses the training cluster: trials side by side, or one at a time.

The allocator sizes a cluster for one training run. A search runs many; on the same cluster
they can go two ways:

- **per worker**: each trial trains in one worker's process on that worker's threads (the
  family's in-process trainer), as many at once as there are workers;
- **whole cluster**: one trial at a time, trained across every worker as the candidate will
  be (the family's Dask trainer).

Per worker costs ``n x t1 x threads`` core-seconds for ``n`` trials and whole cluster
``n x tW x workers x threads``, where ``t1`` and ``tW`` are the allocator's predicted times
of one training on one worker and on the whole cluster. So per worker pays when ``t1 <
workers x tW``: whenever adding workers speeds one training up less than proportionally,
which is the rule for data that fits one worker. It does not pay, and is not tried, when the
allocator predicts that one worker would run out of memory with the whole dataset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from prefect_mlops.mlops.training_config import TuningConfig

from .allocation import Allocation, Candidate, Objective
from .history import ClusterShape, JobFeatures, RunProfile
from .machines import default_catalogue
from .model import fit_model, nearest_jobs
from .predict import plan_times
from .recommend import score_candidates, shape_price


class TrialPlan(BaseModel):
    """Where a search's trials run, and why."""

    mode: Literal["per-worker", "whole-cluster"]
    slots: int = Field(ge=1, description="Trials at once.")
    threads_per_trial: int = Field(ge=1)
    predicted_trial_time_s: float = Field(ge=0)
    predicted_trial_core_s: float = Field(ge=0)
    reason: str

    def summary(self) -> str:
        """One line, e.g. ``2 trials at a time, one per worker, 1 thread each``."""
        if self.mode == "whole-cluster":
            return f"one trial at a time on the whole cluster ({self.threads_per_trial} threads)"
        each = f"{self.threads_per_trial} thread{'s' if self.threads_per_trial > 1 else ''} each"
        if self.slots == 1:
            return f"one trial at a time on one worker ({each.removesuffix(' each')})"
        return f"{self.slots} trials at a time, one per worker, {each}"


def trial_candidates(
    job: JobFeatures,
    shapes: Sequence[ClusterShape],
    history: Sequence[RunProfile],
    objective: Objective,
    cores: int | None,
) -> dict[ClusterShape, Candidate]:
    """The allocator's predicted time, memory and safety of one training on each shape."""
    catalogue = default_catalogue()
    model = fit_model(history, cores)
    plan = plan_times(
        job,
        shapes,
        history,
        lambda s: shape_price(s, objective, catalogue),
        cores=cores,
        gpu_speedup=1.0,
        model=model,
    )
    scored = score_candidates(
        job, shapes, model, nearest_jobs(job, history), objective, plan, history, catalogue
    )
    return {candidate.shape: candidate for candidate in scored}


def plan_trials(
    job: JobFeatures,
    allocation: Allocation,
    tuning: TuningConfig,
    history: Sequence[RunProfile],
    objective: Objective | None = None,
    cores: int | None = None,
) -> TrialPlan:
    """How the search's trials use the allocated cluster (see the module's docstring).

    Args:
        job: The training job (its dataset's meta-features and the config's parameters).
        allocation: The cluster the allocator chose for one training run.
        tuning: The search settings (``parallel``, the budget).
        history: Every recorded run, for the predictions.
        objective: Prices, for the memory margin; the default pricing when None.
        cores: CPU cores a local cluster's workers share (None: each has its own).

    Returns:
        The plan, with the predictions behind it and the reason in words.
    """
    objective = objective or Objective()
    workers, threads = allocation.workers, allocation.threads_per_worker
    full = allocation.shape
    one = full.model_copy(update={"workers": 1})
    predicted = trial_candidates(job, list({full, one}), history, objective, cores)
    t1, tw = predicted[one].predicted_time_s, predicted[full].predicted_time_s
    per_worker = TrialPlan(
        mode="per-worker",
        slots=workers,
        threads_per_trial=threads,
        predicted_trial_time_s=t1,
        predicted_trial_core_s=t1 * threads,
        reason="",
    )
    whole = TrialPlan(
        mode="whole-cluster",
        slots=1,
        threads_per_trial=workers * threads,
        predicted_trial_time_s=tw,
        predicted_trial_core_s=tw * workers * threads,
        reason="",
    )
    compared = (
        f"predicted {t1:.1f}s on one worker ({t1 * threads:.0f} core-s) against {tw:.1f}s on "
        f"the whole {full.label()} cluster ({tw * workers * threads:.0f} core-s)"
    )
    if allocation.gpu:
        plan, why = whole, "the cluster's GPU is not shared between trials"
    elif workers == 1:
        plan, why = per_worker, "the cluster has one worker"
    elif tuning.parallel == "never":
        plan, why = whole, "training.tuning.parallel is 'never'"
    elif predicted[one].excluded:
        plan, why = whole, f"one worker would run out of memory: {predicted[one].excluded}"
    elif t1 <= workers * tw:
        plan, why = per_worker, f"side by side is cheaper: {compared}"
    else:
        plan, why = whole, f"the whole cluster is cheaper: {compared}"
    if tuning.budget_core_seconds is not None and plan.predicted_trial_core_s > 0:
        affordable = math.floor(tuning.budget_core_seconds / plan.predicted_trial_core_s)
        why += (
            f"; the budget of {tuning.budget_core_seconds:.0f} core-s buys about "
            f"{min(affordable, tuning.trials)} of the {tuning.trials} trials"
        )
    return plan.model_copy(update={"reason": f"{plan.summary()}: {why}"})
