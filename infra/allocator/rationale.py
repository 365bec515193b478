"""The recommendation in words: why this shape, on what evidence, and why (not) a GPU."""

from __future__ import annotations

from collections.abc import Sequence

from .allocation import Candidate, Objective, PastRun
from .history import JobFeatures, RunProfile
from .model import Neighbour
from .predict import TimePlan
from .safety import memory_is_modelled


def objective_text(objective: Objective) -> str:
    """The objective in words, e.g. "least cost finishing within 600s"."""
    if objective.kind == "time":
        budget = f" within {objective.budget:.0f} core-s" if objective.budget else ""
        return f"least time{budget}"
    deadline = f" finishing within {objective.deadline_s:.0f}s" if objective.deadline_s else ""
    return f"least cost{deadline}"


def job_text(job: JobFeatures) -> str:
    """The job in a few words: its family and size."""
    if job.is_boosting:
        return (
            f"{job.family} on {job.n_rows:,} rows x {job.n_features} features, up to "
            f"{job.n_estimators} rounds"
        )
    size = (
        f"{job.size / 1e9:.3g} GB of input"
        if job.bytes_in_memory
        else (f"{job.n_rows:,} rows" if job.n_rows else "input of unknown size")
    )
    return f"job '{job.name or '?'}' ({job.family or 'no family'}), {size}"


def rationale_lines(
    job: JobFeatures,
    chosen: Candidate,
    best: Candidate,
    candidates: Sequence[Candidate],
    plan: TimePlan,
    history: Sequence[RunProfile],
    objective: Objective,
    unit: str,
) -> list[str]:
    """Why the chosen shape: prediction, evidence, predictors, exploration, memory."""
    lines = [
        f"{objective_text(objective)}: {chosen.shape.label()} is predicted to take "
        f"{chosen.predicted_time_s:.1f}s and cost {chosen.predicted_cost:.4g} {unit} "
        f"for {job_text(job)}."
    ]
    if not history:
        lines.append(
            "No run history yet: this is the prior alone (low confidence). "
            "Every training run is recorded, so the next recommendations learn from it."
        )
    else:
        own = sum(1 for r in history if r.program == job.program)
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
            "Memory: not predicted (the memory model is the boosting families'); only runs that ran out of "
            "memory, or this job's failures, rule shapes out."
        )
    return lines


def gpu_reason(
    chosen: Candidate,
    candidates: Sequence[Candidate],
    speedup: float,
    gpu_jobs: int,
    objective: Objective,
    gpu_note: str | None,
) -> str:
    """Why a GPU was or was not chosen, or why none was considered."""
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


def past_runs(neighbours: Sequence[Neighbour], limit: int = 5) -> list[PastRun]:
    """The fastest runs of the nearest jobs, the evidence a person can check."""
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
