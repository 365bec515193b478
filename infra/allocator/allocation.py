"""What a recommendation is made of: the objective and its prices, scored candidates, the pick.

:class:`Objective` says what to optimise (cost under a deadline, or time under a budget) and
how a shape is priced when its machine type has no list price; :class:`Candidate` is one shape
scored; :class:`Allocation` is the shape a training run gets, with its predictions, the
runners-up, the past runs behind it and the rationale.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from .history import ClusterShape, WithShape

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
