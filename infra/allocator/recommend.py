"""Recommending a cluster for a training job: predict every candidate, keep the safe ones, pick.

``recommend_allocation`` scores every candidate shape (workers x threads x memory x GPU that
exists) with the fitted model and the transfer from similar past jobs, removes shapes that
would run out of memory (predicted, or already seen failing for a job at least as heavy per
worker), and picks by the objective: least cost under an optional deadline, or least time
under an optional budget. The :class:`Allocation` says why, shows the runners-up and the past
runs behind the prediction, and how sure it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, Field

from .history import ClusterShape, JobFeatures, RunProfile, WithShape
from .model import (
    PAUSE_FRACTION,
    FittedModel,
    Neighbour,
    Prediction,
    fit_model,
    memory_spread,
    nearest_jobs,
    safe_fraction,
    same_shape,
    transfer_ratio,
)

GIB = 2**30


class Pricing(BaseModel):
    """What a worker costs per second, in CPU-core-seconds."""

    cpu_price: float = Field(default=1.0, gt=0, description="Per thread (core) per second.")
    memory_price_per_gib: float = Field(
        default=0.125, ge=0, description="Per GiB of worker memory limit per second."
    )
    gpu_price_ratio: float = Field(
        default=8.0, gt=0, description="A GPU costs this many CPU cores."
    )

    def per_second(self, shape: ClusterShape) -> float:
        """Price of the whole cluster for one second."""
        worker = (
            shape.threads_per_worker * self.cpu_price
            + shape.memory_per_worker_bytes / GIB * self.memory_price_per_gib
            + (self.gpu_price_ratio * self.cpu_price if shape.gpu else 0.0)
        )
        return shape.workers * worker


class Objective(BaseModel):
    """What to optimise and under which constraint."""

    kind: Literal["cost", "time"] = "cost"
    deadline_s: float | None = Field(default=None, gt=0, description="With kind=cost.")
    budget: float | None = Field(default=None, gt=0, description="With kind=time, core-seconds.")
    pricing: Pricing = Field(default_factory=Pricing)
    memory_margin: float = Field(
        default=1.0,
        ge=1,
        description="Extra factor on top of the learned memory margin (see memory_exclusion).",
    )
    explore_margin: float = Field(
        default=0.03,
        ge=0,
        description="Among candidates predicted this close to the best, try the least-known.",
    )


class Candidate(BaseModel, WithShape):
    """One scored cluster shape."""

    workers: int
    threads_per_worker: int
    memory_per_worker_bytes: int
    gpu: bool
    predicted_time_s: float
    predicted_peak_memory_bytes: int
    predicted_cost: float
    support: float = Field(description="Weighted count of similar past runs on this shape.")
    excluded: str | None = Field(default=None, description="Why it cannot be picked.")


class PastRun(BaseModel):
    """A past run behind a recommendation."""

    use_case: str
    dataset_version: str
    distance: float
    shape: str
    status: str
    time_s: float
    peak_memory_mib: float | None


class Allocation(BaseModel, WithShape):
    """The cluster a training run should get, with predictions and the reasons."""

    workers: int
    threads_per_worker: int
    memory_per_worker_bytes: int
    gpu: bool
    predicted_wall_time_s: float
    predicted_peak_memory_bytes: int
    predicted_cost: float
    confidence: float = Field(ge=0, le=1)
    confidence_label: Literal["low", "medium", "high"]
    objective: str
    rationale: list[str]
    alternatives: list[Candidate] = Field(default_factory=list)
    nearest_runs: list[PastRun] = Field(default_factory=list)
    history_runs: int = 0
    explored: bool = False

    def summary(self) -> str:
        """One line: shape, predictions and confidence."""
        return (
            f"{self.shape.label()}: predicted {self.predicted_wall_time_s:.1f}s, "
            f"peak {self.predicted_peak_memory_bytes / 2**20:.0f} MiB/worker, "
            f"cost {self.predicted_cost:.1f} core-s, confidence {self.confidence_label} "
            f"({self.confidence:.2f})"
        )


# ---------------------------------------------------------------- scoring


def score_candidates(
    job: JobFeatures,
    shapes: Sequence[ClusterShape],
    model: FittedModel,
    neighbours: Sequence[Neighbour],
    objective: Objective,
    gpu_speedup: float,
) -> list[Candidate]:
    """Predict time, memory and cost of every shape, marking the unsafe ones."""
    scored = []
    spread = memory_spread(model, neighbours)
    for shape in shapes:
        cpu_shape = shape.model_copy(update={"gpu": False})
        base = model.base_prediction(job, cpu_shape)
        time_ratio, support = transfer_ratio(model, neighbours, cpu_shape, "time")
        memory_ratio, _ = transfer_ratio(model, neighbours, cpu_shape, "memory")
        time_s = base.time_s * time_ratio / (gpu_speedup if shape.gpu else 1.0)
        prediction = Prediction(time_s, int(base.peak_memory_bytes * memory_ratio))
        scored.append(
            Candidate(
                **shape.model_dump(),
                predicted_time_s=prediction.time_s,
                predicted_peak_memory_bytes=prediction.peak_memory_bytes,
                predicted_cost=prediction.time_s * objective.pricing.per_second(shape),
                support=support,
                excluded=memory_exclusion(job, shape, prediction, model.runs, objective, spread),
            )
        )
    return scored


def memory_exclusion(
    job: JobFeatures,
    shape: ClusterShape,
    prediction: Prediction,
    runs: Sequence[RunProfile],
    objective: Objective,
    spread: float = 0.15,
) -> str | None:
    """Why ``shape`` would run out of memory, or None when it looks safe.

    A past out-of-memory run rules out every shape that gives each worker at least as much
    data and as many threads with at most as much memory; otherwise the predicted peak, times
    a margin, must stay under the share of the limit that past runs show is safe. The margin is learned: two standard deviations of the memory
    model's error on similar jobs (``spread``, in log terms), and more after failures it
    underestimated.
    """
    per_worker = job.bytes_in_memory / shape.workers
    for run in runs:
        if run.status != "out-of-memory" or run.gpu != shape.gpu:
            continue
        heavier = per_worker >= 0.9 * run.bytes_in_memory / run.workers
        heavier = heavier and shape.threads_per_worker >= run.threads_per_worker
        if heavier and shape.memory_per_worker_bytes <= run.memory_per_worker_bytes:
            return (
                f"a job with {run.bytes_in_memory / run.workers / 2**20:.0f} MiB per worker "
                f"ran out of memory at {run.memory_per_worker_bytes / GIB:.2g} GiB "
                f"({run.use_case}, {run.shape.label()})"
            )
    margin = objective.memory_margin * math.exp(2 * spread) * failure_margin(runs)
    fraction = safe_fraction(runs)
    needed = prediction.peak_memory_bytes * margin / fraction
    if needed > shape.memory_per_worker_bytes:
        return (
            f"predicted peak {prediction.peak_memory_bytes / 2**20:.0f} MiB x margin "
            f"{margin:.2f} is over {fraction:.0%} of {shape.memory_per_worker_bytes / GIB:.2g} GiB"
        )
    return None


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


# ---------------------------------------------------------------- picking


def pick(candidates: Sequence[Candidate], objective: Objective) -> tuple[Candidate, list[str]]:
    """The best safe candidate for the objective, and what the constraint did."""
    safe = [c for c in candidates if c.excluded is None]
    notes: list[str] = []
    if not safe:
        safe = [
            max(candidates, key=lambda c: c.memory_per_worker_bytes / c.predicted_peak_memory_bytes)
        ]
        notes.append(
            "every candidate risks running out of memory; taking the one with the most "
            "memory headroom. Raise the memory limit per worker if you can."
        )
    if objective.kind == "time":
        within = [
            c for c in safe if objective.budget is None or c.predicted_cost <= objective.budget
        ]
        if not within:
            notes.append(
                f"no candidate fits the budget of {objective.budget:.0f} core-s: taking the cheapest"
            )
            return min(safe, key=lambda c: c.predicted_cost), notes
        return min(within, key=lambda c: c.predicted_time_s), notes
    within = [
        c
        for c in safe
        if objective.deadline_s is None or c.predicted_time_s <= objective.deadline_s
    ]
    if not within:
        notes.append(
            f"no candidate meets the {objective.deadline_s:.0f}s deadline: taking the fastest"
        )
        return min(safe, key=lambda c: c.predicted_time_s), notes
    return min(within, key=lambda c: c.predicted_cost), notes


def _key(candidate: Candidate, objective: Objective) -> float:
    return candidate.predicted_time_s if objective.kind == "time" else candidate.predicted_cost


def explore(best: Candidate, candidates: Sequence[Candidate], objective: Objective) -> Candidate:
    """A close runner-up that similar jobs never tried, when the best one is itself unproven."""
    if best.support >= 1.0 or objective.explore_margin == 0:
        return best
    limit = _key(best, objective) * (1 + objective.explore_margin)
    close = [
        c
        for c in candidates
        if c.excluded is None and _key(c, objective) <= limit and c.support < best.support
    ]
    return min(close, key=lambda c: (c.support, _key(c, objective))) if close else best


def confidence(support: float, neighbours: Sequence[Neighbour], history_size: int) -> float:
    """0..1: how much measured evidence near this job and shape backs the prediction."""
    if history_size == 0:
        return 0.1
    nearest = neighbours[0].distance if neighbours else 10.0
    closeness = math.exp(-nearest)
    evidence = 1 - math.exp(-support)
    return round(min(0.95, 0.15 + 0.8 * evidence * (0.4 + 0.6 * closeness)), 2)


def confidence_label(value: float) -> Literal["low", "medium", "high"]:
    """Words for a confidence number."""
    return "low" if value < 0.4 else "medium" if value < 0.7 else "high"


# ---------------------------------------------------------------- the recommendation


def learned_gpu_speedup(
    model: FittedModel, runs: Sequence[RunProfile], prior: float
) -> tuple[float, int]:
    """Median of (CPU time the model predicts for the shape) / (measured GPU time).

    Returns the prior when no GPU run has been measured, and how many GPU runs were used.
    """
    ratios = [
        model.base_prediction(r.job, r.shape.model_copy(update={"gpu": False}), r.iterations).time_s
        / max(r.total_time_s, 1e-6)
        for r in runs
        if r.gpu and r.status == "success"
    ]
    if not ratios:
        return prior, 0
    return float(sorted(ratios)[len(ratios) // 2]), len(ratios)


def recommend_allocation(
    job: JobFeatures,
    history: Sequence[RunProfile],
    shapes: Sequence[ClusterShape],
    objective: Objective | None = None,
    *,
    notes: Sequence[str] = (),
    gpu_note: str | None = None,
    gpu_prior_speedup: float = 1.5,
    model: FittedModel | None = None,
    cores: int | None = 1,
) -> Allocation:
    """Recommend a cluster for ``job`` from the run history.

    Args:
        job: The job's meta-features and cost-driving parameters.
        history: Every past run usable for learning (other jobs and this one).
        shapes: The candidates that exist (see :func:`infra.allocator.resources.candidate_shapes`).
        objective: Cost under a deadline (default) or time under a budget, with prices.
        notes: What limiting the candidates did (capped requests), for the rationale.
        gpu_note: Why no GPU candidate exists, when none does.
        gpu_prior_speedup: GPU speed-up assumed until GPU runs are measured.
        model: A model already fitted on ``history`` (fitted here otherwise).
        cores: CPU cores the candidates' workers share (None: each worker has its own).

    Returns:
        The allocation, its runners-up, the nearest past runs and the rationale.
    """
    objective = objective or Objective()
    model = model or fit_model(history, cores)
    neighbours = nearest_jobs(job, history)
    speedup, gpu_jobs = learned_gpu_speedup(model, history, gpu_prior_speedup)
    candidates = score_candidates(job, shapes, model, neighbours, objective, speedup)
    best, constraint_notes = pick(candidates, objective)
    chosen = explore(best, candidates, objective)
    value = confidence(chosen.support, neighbours, len(history))
    rationale = _rationale(job, chosen, best, candidates, neighbours, history, objective)
    rationale += [*notes, *constraint_notes]
    rationale.append(_gpu_reason(chosen, candidates, speedup, gpu_jobs, objective, gpu_note))
    ranked = _best_per_shape(
        [c for c in candidates if c.excluded is None and not same_shape(c.shape, chosen.shape)],
        objective,
    )
    return Allocation(
        **chosen.shape.model_dump(),
        predicted_wall_time_s=chosen.predicted_time_s,
        predicted_peak_memory_bytes=chosen.predicted_peak_memory_bytes,
        predicted_cost=chosen.predicted_cost,
        confidence=value,
        confidence_label=confidence_label(value),
        objective=_objective_text(objective),
        rationale=rationale,
        alternatives=ranked[:3] + [c for c in candidates if c.excluded][:2],
        nearest_runs=_past_runs(neighbours),
        history_runs=len(history),
        explored=chosen is not best,
    )


def _best_per_shape(candidates: Sequence[Candidate], objective: Objective) -> list[Candidate]:
    """The best memory size of each workers x threads x GPU shape, best first."""
    best: dict[tuple[int, int, bool], Candidate] = {}
    for c in sorted(candidates, key=lambda c: _key(c, objective)):
        best.setdefault((c.workers, c.threads_per_worker, c.gpu), c)
    return list(best.values())


def _objective_text(objective: Objective) -> str:
    if objective.kind == "time":
        budget = f" within {objective.budget:.0f} core-s" if objective.budget else ""
        return f"least time{budget}"
    deadline = f" finishing within {objective.deadline_s:.0f}s" if objective.deadline_s else ""
    return f"least cost{deadline}"


def _rationale(
    job: JobFeatures,
    chosen: Candidate,
    best: Candidate,
    candidates: Sequence[Candidate],
    neighbours: Sequence[Neighbour],
    history: Sequence[RunProfile],
    objective: Objective,
) -> list[str]:
    lines = [
        f"{_objective_text(objective)}: {chosen.shape.label()} is predicted to take "
        f"{chosen.predicted_time_s:.1f}s and cost {chosen.predicted_cost:.1f} core-s "
        f"for {job.n_rows:,} rows x {job.n_features} features, up to {job.n_estimators} rounds."
    ]
    if not history:
        lines.append(
            "No run history yet: this is the Ernest-style prior alone (low confidence). "
            "Every training run is recorded, so the next recommendations learn from it."
        )
    elif neighbours:
        near = ", ".join(f"{n.runs[0].use_case} (distance {n.distance:.2f})" for n in neighbours)
        lines.append(
            f"Learned from {len(history)} past run(s); most similar jobs: {near}. "
            f"Shape-specific correction from {chosen.support:.1f} weighted similar run(s)."
        )
    if chosen is not best:
        lines.append(
            f"Exploring: {best.shape.label()} is predicted marginally better but similar jobs "
            f"never ran {chosen.shape.label()}; measuring it improves later picks."
        )
    excluded = [c for c in candidates if c.excluded]
    if excluded:
        lines.append(
            f"{len(excluded)} shape(s) ruled out for memory, e.g. {excluded[0].shape.label()}: "
            f"{excluded[0].excluded}."
        )
    return lines


def _gpu_reason(
    chosen: Candidate,
    candidates: Sequence[Candidate],
    speedup: float,
    gpu_jobs: int,
    objective: Objective,
    gpu_note: str | None,
) -> str:
    basis = f"from {gpu_jobs} GPU run(s)" if gpu_jobs else "assumed, no GPU run measured yet"
    if not any(c.gpu for c in candidates):
        return f"GPU: not considered, {gpu_note or 'no GPU is available'}."
    if chosen.gpu:
        return (
            f"GPU: chosen; predicted speed-up x{speedup:.1f} ({basis}) pays for its price of "
            f"{objective.pricing.gpu_price_ratio:g} cores."
        )
    return (
        f"GPU: available but not chosen; predicted speed-up x{speedup:.1f} ({basis}) does not "
        f"pay for its price of {objective.pricing.gpu_price_ratio:g} cores for this job."
    )


def _past_runs(neighbours: Sequence[Neighbour], limit: int = 5) -> list[PastRun]:
    runs = [
        PastRun(
            use_case=run.use_case,
            dataset_version=run.dataset_version,
            distance=round(n.distance, 3),
            shape=run.shape.label(),
            status=run.status,
            time_s=round(run.total_time_s, 2),
            peak_memory_mib=round(run.peak_memory_bytes / 2**20, 1)
            if run.peak_memory_bytes
            else None,
        )
        for n in neighbours
        for run in sorted(n.runs, key=lambda r: r.total_time_s)[:2]
    ]
    return runs[:limit]
