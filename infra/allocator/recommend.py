"""Recommending a cluster for a job: predict every candidate, keep the safe ones, pick.

``recommend_allocation`` predicts every candidate shape's time with the predictor that did
best in leave-one-out on the history (``predict.py``: the job's own scaling curves, its nearest
other jobs', the LightGBM cost model, an Ernest prior), removes shapes that would run out of
memory (already seen failing for a job at least as heavy per worker, or predicted, unless the
job itself has run on as little memory with as much data per worker), and picks by the
objective: least cost under an optional deadline, or least time under an optional budget.
Cost is node-hours x the machine type's price (``machines.py``) when candidates name one,
core-seconds otherwise. The :class:`Allocation` says why, shows the runners-up and the past
runs behind the prediction, and how sure it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from .curves import job_gap
from .history import ClusterShape, JobFeatures, RunProfile, WithShape
from .machines import Catalogue, default_catalogue
from .model import (
    PAUSE_FRACTION,
    FittedModel,
    Neighbour,
    Prediction,
    fit_model,
    memory_spread,
    nearest_jobs,
    round_work,
    safe_fraction,
    same_shape,
    transfer_ratio,
)
from .predict import TimePlan, plan_times

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
    machine_type: str | None = None
    predicted_time_s: float
    predicted_peak_memory_bytes: int | None = Field(description="None: not predictable.")
    predicted_cost: float
    support: float = Field(description="Weighted count of similar past runs on this shape.")
    predictor: str = Field(default="cost", description="Which predictor timed it.")
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
    machine_type: str | None = None
    predicted_wall_time_s: float
    predicted_peak_memory_bytes: int | None = None
    predicted_cost: float
    cost_unit: str = "core-s"
    predictor: str | None = Field(default=None, description="Which predictor timed the pick.")
    predictor_regret: float | None = Field(
        default=None, description="Its mean leave-one-out regret on the history."
    )
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
        peak = (
            f"peak {self.predicted_peak_memory_bytes / 2**20:.0f} MiB/worker"
            if self.predicted_peak_memory_bytes
            else "peak not predicted"
        )
        return (
            f"{self.shape.label()}: predicted {self.predicted_wall_time_s:.1f}s, {peak}, "
            f"cost {self.predicted_cost:.4g} {self.cost_unit}, confidence "
            f"{self.confidence_label} ({self.confidence:.2f})"
        )


# ---------------------------------------------------------------- scoring


def shape_price(shape: ClusterShape, objective: Objective, catalogue: Catalogue) -> float:
    """What a shape costs per second: its machine type's price, else the objective's pricing."""
    price = catalogue.price_per_second(shape)
    return objective.pricing.per_second(shape) if price is None else price


def memory_is_modelled(job: JobFeatures) -> bool:
    """Whether the memory model may filter shapes for ``job``: its form is LightGBM's (a base
    plus multiples of each worker's share of the data), fitted on LightGBM runs. For other jobs
    memory is not predicted, and only failures rule shapes out."""
    return job.is_lightgbm


def score_candidates(
    job: JobFeatures,
    shapes: Sequence[ClusterShape],
    model: FittedModel,
    neighbours: Sequence[Neighbour],
    objective: Objective,
    plan: TimePlan,
    history: Sequence[RunProfile],
    catalogue: Catalogue,
) -> list[Candidate]:
    """Predicted time, memory and cost of every shape, marking the unsafe ones."""
    scored = []
    spread = memory_spread(model, neighbours)
    modelled = memory_is_modelled(job)
    for shape in shapes:
        timed = plan.times[shape]
        peak = None
        if modelled:
            cpu_shape = shape.model_copy(update={"gpu": False})
            memory_ratio, _ = transfer_ratio(model, neighbours, cpu_shape, "memory")
            peak = int(model.base_prediction(job, cpu_shape).peak_memory_bytes * memory_ratio)
        scored.append(
            Candidate(
                **shape.model_dump(),
                predicted_time_s=timed.time_s,
                predicted_peak_memory_bytes=peak,
                predicted_cost=timed.time_s * shape_price(shape, objective, catalogue),
                support=timed.support,
                predictor=timed.predictor,
                excluded=failed_before(job, shape, history)
                or memory_exclusion(
                    job,
                    shape,
                    Prediction(timed.time_s, peak or 0),
                    history,
                    objective,
                    spread,
                    modelled=modelled,
                ),
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
    if job.name is None:
        return None
    outcomes = [
        r.status
        for r in runs
        if r.use_case == job.name
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
        if run.status != "success" or run.use_case != job.name or run.gpu != shape.gpu:
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


# ---------------------------------------------------------------- picking


def pick(candidates: Sequence[Candidate], objective: Objective) -> tuple[Candidate, list[str]]:
    """The best safe candidate for the objective, and what the constraint did."""
    safe = [c for c in candidates if c.excluded is None]
    notes: list[str] = []
    if not safe:
        safe = [
            max(
                candidates,
                key=lambda c: (
                    c.memory_per_worker_bytes / max(c.predicted_peak_memory_bytes or 1, 1)
                ),
            )
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


FUTURE_RUNS = 10
"""Runs of a job a probe's lesson is expected to pay off over (a retraining schedule's month)."""


def explore(
    best: Candidate, candidates: Sequence[Candidate], objective: Objective, error_sd: float
) -> Candidate:
    """A close runner-up nothing similar has run, when probing it is expected to pay.

    With the predictor's log error ``error_sd``, a runner-up predicted ``d`` dearer is really
    cheaper with probability ``P = Phi(-d / (sd * sqrt 2))``; the saving that would bring to
    each of the next :data:`FUTURE_RUNS` runs is about ``P * sd`` of the best's cost. It is
    probed when that exceeds what the probe costs over the best now.
    """
    if best.support >= 1.0 or objective.explore_margin == 0 or error_sd <= 0:
        return best
    best_value = _key(best, objective)
    limit = best_value * (1 + objective.explore_margin)
    gains = []
    for c in candidates:
        value = _key(c, objective)
        if c.excluded is not None or value > limit or c.support >= best.support:
            continue
        gap = math.log(value / best_value)
        chance = 0.5 * math.erfc(gap / (error_sd * 2))  # Phi(-gap / (sd * sqrt 2))
        gain = FUTURE_RUNS * chance * error_sd * best_value - (value - best_value)
        if gain > 0:
            gains.append((gain, c))
    return max(gains, key=lambda g: g[0])[1] if gains else best


def confidence(
    support: float, gap: float, history_size: int, loo_regret: float | None = None
) -> float:
    """0..1: how much measured evidence near this job and shape backs the prediction, lowered
    by how far the predictor's own picks were off in leave-one-out on the history."""
    if history_size == 0:
        return 0.1
    closeness = math.exp(-gap)
    evidence = 1 - math.exp(-support)
    value = 0.15 + 0.8 * evidence * (0.4 + 0.6 * closeness)
    if loo_regret is not None:
        value *= math.exp(-2 * loo_regret)
    return round(min(0.95, max(0.05, value)), 2)


def confidence_label(value: float) -> Literal["low", "medium", "high"]:
    """Words for a confidence number."""
    return "low" if value < 0.4 else "medium" if value < 0.7 else "high"


# ---------------------------------------------------------------- the recommendation


def learned_gpu_speedup(
    job: JobFeatures, model: FittedModel, runs: Sequence[RunProfile], prior: float
) -> tuple[float, int]:
    """The GPU speed-up for this job, learned from measured GPU runs of LightGBM jobs.

    Each GPU run gives a ratio: the CPU time the model predicts for its shape over its measured
    time. The speed-up grows with the work of a boosting round (a GPU is wasted on small
    histograms), so with three GPU runs or more, ``log(ratio)`` is fitted as a line in
    ``log(round work)`` and read at this job's work, within the measured ratios; with fewer,
    their median. Candidates of a GPU machine type are timed by their own curves instead.

    Returns the prior when no GPU run has been measured, and how many GPU runs were used.
    """
    pairs = [
        (
            math.log10(round_work(r.job)),
            math.log(
                model.base_prediction(
                    r.job, r.shape.model_copy(update={"gpu": False}), r.iterations
                ).time_s
                / max(r.total_time_s, 1e-6)
            ),
        )
        for r in runs
        if r.gpu and r.status == "success" and r.job.is_lightgbm and r.machine_type is None
    ]
    if not pairs:
        return prior, 0
    works = np.array([w for w, _ in pairs])
    logs = np.array([x for _, x in pairs])
    if len(pairs) < 3 or np.ptp(works) < 0.1 or not job.is_lightgbm:
        return float(math.exp(np.median(logs))), len(pairs)
    slope, intercept = np.polyfit(works, logs, 1)
    value = intercept + slope * math.log10(round_work(job))
    return float(math.exp(min(max(value, logs.min()), logs.max()))), len(pairs)


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
    catalogue: Catalogue | None = None,
) -> Allocation:
    """Recommend a cluster for ``job`` from the run history.

    Args:
        job: The job: its name and context, input size, family, and for LightGBM the
            meta-features and cost-driving parameters.
        history: Every past run usable for learning (other jobs and this one).
        shapes: The candidates that exist (see :func:`infra.allocator.resources.candidate_shapes`
            or :func:`infra.allocator.resources.machine_shapes`).
        objective: Cost under a deadline (default) or time under a budget, with prices.
        notes: What limiting the candidates did (capped requests), for the rationale.
        gpu_note: Why no GPU candidate exists, when none does.
        gpu_prior_speedup: GPU speed-up assumed until GPU runs are measured.
        model: A model already fitted on ``history`` (fitted here otherwise).
        cores: CPU cores the candidates' workers share (None: each worker has its own).
        catalogue: Machine types and prices, for candidates that name one.

    Returns:
        The allocation, its runners-up, the nearest past runs and the rationale.
    """
    objective = objective or Objective()
    catalogue = catalogue or default_catalogue()
    model = model or fit_model(history, cores)
    neighbours = nearest_jobs(job, history)
    speedup, gpu_jobs = learned_gpu_speedup(job, model, history, gpu_prior_speedup)
    plan = plan_times(
        job,
        shapes,
        history,
        lambda s: shape_price(s, objective, catalogue),
        cores=cores,
        gpu_speedup=speedup,
        price_key=(objective.pricing.model_dump_json(), catalogue.fingerprint),
        model=model,
    )
    candidates = score_candidates(
        job, shapes, model, neighbours, objective, plan, history, catalogue
    )
    best, constraint_notes = pick(candidates, objective)
    error_sd = plan.best.log_error if plan.best else 0.3
    chosen = explore(best, candidates, objective, error_sd)
    regret = plan.best.mean_regret if plan.best and chosen.predictor != "measured" else None
    own = chosen.predictor.startswith("same-job") or chosen.predictor == "measured"
    gap = 0.0 if own else _nearest_gap(job, plan, neighbours)
    value = confidence(chosen.support, gap, len(history), regret)
    unit = "core-s" if chosen.machine_type is None else "currency units"
    rationale = _rationale(job, chosen, best, candidates, plan, history, objective, unit)
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
        cost_unit=unit,
        predictor=chosen.predictor,
        predictor_regret=regret,
        confidence=value,
        confidence_label=confidence_label(value),
        objective=_objective_text(objective),
        rationale=rationale,
        alternatives=ranked[:3] + [c for c in candidates if c.excluded][:2],
        nearest_runs=_past_runs(neighbours),
        history_runs=len(history),
        explored=chosen is not best,
    )


def _nearest_gap(job: JobFeatures, plan: TimePlan, neighbours: Sequence[Neighbour]) -> float:
    """How unlike this job the nearest other job is (LightGBM meta-features, else curves)."""
    if neighbours:
        return neighbours[0].distance
    return min((job_gap(job, c) for c in plan.curves if c.job != job.name), default=10.0)


def _best_per_shape(candidates: Sequence[Candidate], objective: Objective) -> list[Candidate]:
    """The best memory size of each workers x threads x GPU shape, best first."""
    best: dict[tuple, Candidate] = {}
    for c in sorted(candidates, key=lambda c: _key(c, objective)):
        best.setdefault((c.workers, c.threads_per_worker, c.gpu, c.machine_type), c)
    return list(best.values())


def _objective_text(objective: Objective) -> str:
    if objective.kind == "time":
        budget = f" within {objective.budget:.0f} core-s" if objective.budget else ""
        return f"least time{budget}"
    deadline = f" finishing within {objective.deadline_s:.0f}s" if objective.deadline_s else ""
    return f"least cost{deadline}"


def _job_text(job: JobFeatures) -> str:
    if job.is_lightgbm:
        return f"{job.n_rows:,} rows x {job.n_features} features, up to {job.n_estimators} rounds"
    size = (
        f"{job.size / 1e9:.3g} GB of input"
        if job.bytes_in_memory
        else (f"{job.n_rows:,} rows" if job.n_rows else "input of unknown size")
    )
    return f"job '{job.name or '?'}' ({job.family or 'no family'}), {size}"


def _rationale(
    job: JobFeatures,
    chosen: Candidate,
    best: Candidate,
    candidates: Sequence[Candidate],
    plan: TimePlan,
    history: Sequence[RunProfile],
    objective: Objective,
    unit: str,
) -> list[str]:
    lines = [
        f"{_objective_text(objective)}: {chosen.shape.label()} is predicted to take "
        f"{chosen.predicted_time_s:.1f}s and cost {chosen.predicted_cost:.4g} {unit} "
        f"for {_job_text(job)}."
    ]
    if not history:
        lines.append(
            "No run history yet: this is the prior alone (low confidence). "
            "Every training run is recorded, so the next recommendations learn from it."
        )
    else:
        own = sum(1 for r in history if r.use_case == job.name)
        lines.append(
            f"Learned from {len(history)} past run(s), {own} of this job; timed by "
            f"'{chosen.predictor}' with {chosen.support:.1f} weighted run(s) behind it."
        )
    if plan.scores:
        ranked = ", ".join(f"{s.name} {s.mean_regret:.0%} mean regret" for s in plan.scores[:4])
        lines.append(
            f"Predictors by leave-one-out on the history ({plan.scores[0].problems} held-out "
            f"problem(s)): {ranked}."
        )
    if chosen is not best:
        lines.append(
            f"Exploring: {best.shape.label()} is predicted marginally better but nothing similar "
            f"ran {chosen.shape.label()}; the expected saving on later runs pays for the probe."
        )
    excluded = [c for c in candidates if c.excluded]
    if excluded:
        lines.append(
            f"{len(excluded)} shape(s) ruled out for memory, e.g. {excluded[0].shape.label()}: "
            f"{excluded[0].excluded}."
        )
    if not memory_is_modelled(job):
        lines.append(
            "Memory: not predicted (the memory model is LightGBM's); only runs that ran out of "
            "memory, or this job's failures, rule shapes out."
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
    if any(c.gpu and c.machine_type for c in candidates):
        verdict = "chosen" if chosen.gpu else "not chosen"
        return (
            f"GPU: {verdict}; GPU machine types are timed by their own measured curves and "
            "priced from the machine catalogue."
        )
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
