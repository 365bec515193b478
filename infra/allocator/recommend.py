"""Recommending a cluster for a job: predict every candidate, keep the safe ones, pick.

``recommend_allocation`` predicts every candidate shape's time with the predictor that did
best in leave-one-out on the history (``predict.py``: the job's own scaling curves, its nearest
other jobs', the boosting cost model, an Ernest prior), removes shapes that would run out of
memory (``safety.py``), and picks by the objective (``allocation.py``): least cost under an
optional deadline, or least time under an optional budget. Cost is node-hours x the machine
type's price (``machines.py``) when candidates name one, core-seconds otherwise. The
:class:`Allocation` says why (``rationale.py``), shows the runners-up and the past runs behind
the prediction, and how sure it is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from .allocation import Allocation, Candidate, Objective
from .curves import job_gap
from .history import ClusterShape, JobFeatures, RunProfile
from .machines import Catalogue, default_catalogue
from .model import (
    FittedModel,
    Neighbour,
    Prediction,
    fit_model,
    memory_spread,
    nearest_jobs,
    round_work,
    same_shape,
    transfer_ratio,
)
from .predict import TimePlan, plan_times
from .rationale import gpu_reason, objective_text, past_runs, rationale_lines
from .safety import failed_before, memory_exclusion, memory_is_modelled

# ---------------------------------------------------------------- scoring


def shape_price(shape: ClusterShape, objective: Objective, catalogue: Catalogue) -> float:
    """What a shape costs per second: its machine type's price, else the objective's pricing."""
    price = catalogue.price_per_second(shape)
    return objective.pricing.per_second(shape) if price is None else price


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
    """The GPU speed-up for this job, learned from measured GPU runs of boosting jobs.

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
        if r.gpu and r.status == "success" and r.job.is_boosting and r.machine_type is None
    ]
    if not pairs:
        return prior, 0
    works = np.array([w for w, _ in pairs])
    logs = np.array([x for _, x in pairs])
    if len(pairs) < 3 or np.ptp(works) < 0.1 or not job.is_boosting:
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
        job: The job: its name and context, input size, family, and for a boosting family the
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
    rationale = rationale_lines(job, chosen, best, candidates, plan, history, objective, unit)
    rationale += [*notes, *constraint_notes]
    rationale.append(gpu_reason(chosen, candidates, speedup, gpu_jobs, objective, gpu_note))
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
        objective=objective_text(objective),
        rationale=rationale,
        alternatives=ranked[:3] + [c for c in candidates if c.excluded][:2],
        nearest_runs=past_runs(neighbours),
        history_runs=len(history),
        explored=chosen is not best,
    )


def _nearest_gap(job: JobFeatures, plan: TimePlan, neighbours: Sequence[Neighbour]) -> float:
    """How unlike this job the nearest other job is (boosting meta-features, else curves)."""
    if neighbours:
        return neighbours[0].distance
    return min((job_gap(job, c) for c in plan.curves if c.program != job.program), default=10.0)


def _best_per_shape(candidates: Sequence[Candidate], objective: Objective) -> list[Candidate]:
    """The best memory size of each workers x threads x GPU shape, best first."""
    best: dict[tuple, Candidate] = {}
    for c in sorted(candidates, key=lambda c: _key(c, objective)):
        best.setdefault((c.workers, c.threads_per_worker, c.gpu, c.machine_type), c)
    return list(best.values())
