"""How an allocation shows up where users look: MLflow params/tags/metrics and Prefect markdown."""

from __future__ import annotations

from .allocation import Allocation
from .history import RunProfile

MIB = 2**20


def _mib(value: int | None) -> str:
    """Bytes as MiB, or a dash when not predicted or not measured."""
    return f"{value / MIB:.0f}" if value else "-"


def allocation_params(allocation: Allocation) -> dict[str, str | int | float | bool]:
    """MLflow params of the recommendation (compare them across runs in the MLflow UI)."""
    return {
        "allocator.workers": allocation.workers,
        "allocator.threads_per_worker": allocation.threads_per_worker,
        "allocator.memory_per_worker_gib": round(allocation.memory_per_worker_bytes / 2**30, 3),
        "allocator.gpu": allocation.gpu,
        "allocator.objective": allocation.objective,
        "allocator.confidence": allocation.confidence_label,
    }


def allocation_tags(allocation: Allocation) -> dict[str, str]:
    """MLflow tags: the rationale and the runners-up, readable in the run's overview."""
    alternatives = "; ".join(
        f"{c.shape.label()} {c.predicted_time_s:.1f}s {c.predicted_cost:.4g} {allocation.cost_unit}"
        + (f" (excluded: {c.excluded})" if c.excluded else "")
        for c in allocation.alternatives
    )
    return {
        "allocator.rationale": " ".join(allocation.rationale)[:5000],
        "allocator.alternatives": alternatives[:5000] or "none",
    }


def outcome_metrics(allocation: Allocation, actual: RunProfile) -> dict[str, float]:
    """Predicted vs actual, as MLflow metrics."""
    metrics = {
        "allocator.predicted_time_s": allocation.predicted_wall_time_s,
        "allocator.actual_time_s": actual.total_time_s,
    }
    if allocation.predicted_peak_memory_bytes:
        metrics["allocator.predicted_peak_memory_mb"] = allocation.predicted_peak_memory_bytes / MIB
    if actual.peak_memory_bytes:
        metrics["allocator.actual_peak_memory_mb"] = actual.peak_memory_bytes / MIB
    return metrics


def allocation_markdown(
    allocation: Allocation, attempts: list[tuple[Allocation, RunProfile]] | None = None
) -> str:
    """The Prefect artifact: the pick, why, the alternatives, the past runs, and the outcome."""
    lines = [
        "# Cluster allocation",
        "",
        f"**{allocation.shape.label()}** ({allocation.objective}), confidence "
        f"**{allocation.confidence_label}** ({allocation.confidence:.2f}), from "
        f"{allocation.history_runs} recorded run(s).",
        "",
        f"Predicted: {allocation.predicted_wall_time_s:.1f} s, "
        f"{_mib(allocation.predicted_peak_memory_bytes)} MiB peak per worker, "
        f"cost {allocation.predicted_cost:.4g} {allocation.cost_unit}"
        + (
            f" (timed by '{allocation.predictor}', mean leave-one-out regret "
            f"{allocation.predictor_regret:.0%})."
            if allocation.predictor_regret is not None
            else "."
        ),
        "",
        "## Why",
        "",
        *[f"- {line}" for line in allocation.rationale],
        "",
        "## Alternatives",
        "",
        f"| shape | predicted time (s) | predicted peak (MiB) | cost ({allocation.cost_unit}) | "
        "note |",
        "|---|---:|---:|---:|---|",
        *[
            f"| {c.shape.label()} | {c.predicted_time_s:.1f} | "
            f"{_mib(c.predicted_peak_memory_bytes)} | {c.predicted_cost:.4g} | "
            f"{c.excluded or ''} |"
            for c in allocation.alternatives
        ],
    ]
    if allocation.nearest_runs:
        lines += [
            "",
            "## Nearest past runs",
            "",
            "| use case | distance | shape | status | time (s) | peak (MiB) |",
            "|---|---:|---|---|---:|---:|",
            *[
                f"| {r.use_case} | {r.distance:.2f} | {r.shape} | {r.status} | {r.time_s:.1f} | "
                f"{r.peak_memory_mib if r.peak_memory_mib is not None else ''} |"
                for r in allocation.nearest_runs
            ],
        ]
    if attempts:
        lines += [
            "",
            "## Predicted vs actual",
            "",
            "| attempt | shape | status | predicted time (s) | actual time (s) | "
            "predicted peak (MiB) | actual peak (MiB) |",
            "|---:|---|---|---:|---:|---:|---:|",
            *[
                f"| {i} | {a.shape.label()} | {run.status} | {a.predicted_wall_time_s:.1f} | "
                f"{run.total_time_s:.1f} | {_mib(a.predicted_peak_memory_bytes)} | "
                f"{_mib(run.peak_memory_bytes)} |"
                for i, (a, run) in enumerate(attempts, 1)
            ],
        ]
    return "\n".join(lines) + "\n"
