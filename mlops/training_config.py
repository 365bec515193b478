"""The training section of a use case: model family, parameters, decision threshold, tuning, cluster.

Part of the use-case configuration (:mod:`mlops.config`), in its own module because every
training-related part of the pipeline reads it: the model families, the allocator, the tuner.
``configs/README.md`` documents every key.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

TaskType = Literal["binary", "multiclass", "regression"]
FAMILY_NAMES = ("lightgbm", "xgboost")
"""The model families a use case can choose (``mlops.families.FAMILIES`` holds their code)."""
TUNABLE_PARAMETERS = (
    "learning_rate",
    "num_leaves",
    "max_bin",
    "min_child_samples",
    "feature_fraction",
    "l2_regularization",
)
"""The :class:`TrainingConfig` parameters a tuning space may search (each family maps them)."""
INTEGER_PARAMETERS = frozenset({"num_leaves", "max_bin", "min_child_samples"})


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class ClusterConfig(StrictModel):
    """The Dask cluster used for training."""

    n_workers: int = Field(default=2, ge=1)
    threads_per_worker: int = Field(default=1, ge=1)
    memory_limit: str = Field(default="4GiB", description="Per worker, e.g. '4GiB'.")
    scheduler_address: str | None = Field(
        default=None, description="Existing scheduler (tcp://host:8786); a LocalCluster if unset."
    )
    network_timeout_minutes: int = Field(
        default=10, ge=1, description="LightGBM's socket time_out: a lost worker fails the run."
    )


class AllocatorConfig(StrictModel):
    """How the allocator sizes the training cluster (``enabled: false`` uses ``cluster`` as is)."""

    enabled: bool = True
    objective: Literal["cost", "time"] = Field(
        default="cost", description="Least cost (core-seconds) or least wall time."
    )
    deadline_s: float | None = Field(
        default=None, gt=0, description="With objective cost: training must finish within this."
    )
    budget: float | None = Field(
        default=None, gt=0, description="With objective time: at most this many core-seconds."
    )
    max_workers: int | None = Field(default=None, ge=1, description="Upper bound on workers.")
    max_threads_per_worker: int | None = Field(default=None, ge=1)
    max_memory_per_worker: str | None = Field(default=None, description="e.g. '8GiB'.")
    use_gpu: Literal["auto", "never"] = Field(
        default="auto", description="auto: a GPU when one exists and it pays for its price."
    )
    cpu_price: float = Field(default=1.0, gt=0, description="Cost of one core for one second.")
    memory_price_per_gib: float = Field(
        default=0.125, ge=0, description="Cost of one GiB of worker memory for one second."
    )
    gpu_price_ratio: float = Field(default=8.0, gt=0, description="A GPU costs this many cores.")
    max_replans: int = Field(
        default=2, ge=0, description="After out-of-memory, re-plan and retry this many times."
    )
    machine_types: list[str] = Field(
        default_factory=list,
        description="On a KubeCluster: size workers as these catalogue machine types (one "
        "worker per node) and price them per node-hour.",
    )
    nodes: list[int] | None = Field(
        default=None, description="With machine_types: the node counts the cluster offers."
    )
    min_nodes: int = Field(default=1, ge=1, description="With machine_types, without nodes.")
    max_nodes: int | None = Field(
        default=None, ge=1, description="With machine_types, without nodes (default 16)."
    )

    @field_validator("max_memory_per_worker")
    @classmethod
    def _valid_bytes(cls, value: str | None) -> str | None:
        if value is not None:
            from dask.utils import parse_bytes

            try:
                parse_bytes(value)
            except (ValueError, TypeError):
                raise ValueError(f"'{value}' is not a size such as '4GiB'") from None
        return value


class ThresholdConfig(StrictModel):
    """How a binary model's decision threshold is chosen on the validation split.

    The threshold is stored with the model version; the pyfunc, the serving service, exported
    bundles and the gates all label a row positive when its probability is at least it.
    """

    objective: Literal["f1", "cost", "precision_at_recall", "fixed"] = Field(
        default="f1",
        description="f1: the best F1; cost: the least false_positive_cost x FP + "
        "false_negative_cost x FN; precision_at_recall: the best precision with recall at "
        "least min_recall; fixed: value.",
    )
    false_positive_cost: float = Field(default=1.0, ge=0, description="With objective cost.")
    false_negative_cost: float = Field(default=1.0, ge=0, description="With objective cost.")
    min_recall: float | None = Field(
        default=None, gt=0, le=1, description="With objective precision_at_recall (required)."
    )
    value: float = Field(default=0.5, gt=0, lt=1, description="With objective fixed.")

    @model_validator(mode="after")
    def _complete(self) -> ThresholdConfig:
        if self.objective == "precision_at_recall" and self.min_recall is None:
            raise ValueError("objective precision_at_recall needs min_recall (e.g. 0.8)")
        if self.objective == "cost" and self.false_positive_cost + self.false_negative_cost == 0:
            raise ValueError(
                "objective cost needs a positive false_positive_cost or false_negative_cost"
            )
        return self


class SearchRange(StrictModel):
    """The range one parameter is searched over (integers for integer parameters)."""

    low: float
    high: float
    log: bool = Field(default=False, description="Sample on a log scale (low must be > 0).")

    @model_validator(mode="after")
    def _not_empty(self) -> SearchRange:
        if not self.low < self.high:
            raise ValueError(f"empty range: low {self.low} is not below high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        return self


def default_search_space() -> dict[str, SearchRange]:
    """What ``training.tuning`` searches when the use case names no space."""
    return {
        "learning_rate": SearchRange(low=0.01, high=0.3, log=True),
        "num_leaves": SearchRange(low=8, high=256, log=True),
        "min_child_samples": SearchRange(low=5, high=200, log=True),
        "feature_fraction": SearchRange(low=0.4, high=1.0),
        "l2_regularization": SearchRange(low=1e-3, high=10.0, log=True),
    }


class TuningConfig(StrictModel):
    """Hyperparameter search with Optuna, warm-started from the history of past datasets.

    Every trial trains with early stopping on the validation split; the best trial's
    parameters train the candidate. Off by default: the config's parameters train as they are.
    """

    enabled: bool = False
    trials: int = Field(default=20, ge=1, description="Trials at most.")
    budget_core_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Stop starting trials once this many core-seconds are spent.",
    )
    warm_start: bool = Field(
        default=True,
        description="Begin with the best configurations of the most similar past datasets.",
    )
    warm_start_datasets: int = Field(
        default=5, ge=0, description="How many similar past datasets lend their best configuration."
    )
    parallel: Literal["auto", "never"] = Field(
        default="auto",
        description="auto: trials run side by side on the cluster's workers when the allocator "
        "predicts that is cheaper than one after another on the whole cluster.",
    )
    space: dict[str, SearchRange] = Field(
        default_factory=default_search_space,
        description=f"Parameter -> range; parameters: {', '.join(TUNABLE_PARAMETERS)}.",
    )
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _known_parameters(cls, value: dict[str, SearchRange]) -> dict[str, SearchRange]:
        if not value:
            raise ValueError("an empty search space: name at least one parameter")
        unknown = sorted(set(value) - set(TUNABLE_PARAMETERS))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown}; a space may search {list(TUNABLE_PARAMETERS)}"
            )
        for name in sorted(INTEGER_PARAMETERS & set(value)):
            if math.floor(value[name].high) <= math.ceil(value[name].low):
                raise ValueError(f"'{name}' takes integers: its range holds fewer than two")
        for name, search in value.items():
            _within_training_limits(name, search)
        return value


def _within_training_limits(name: str, search: SearchRange) -> None:
    """Refuse a range that reaches values ``TrainingConfig`` does not accept (e.g. a
    learning rate above 1), so that no trial fails on it."""
    ends = (search.low, search.high)
    if name in INTEGER_PARAMETERS:
        ends = (math.ceil(search.low), math.floor(search.high))
    checks = (
        ("gt", "above", operator.gt),
        ("ge", "at least", operator.ge),
        ("lt", "below", operator.lt),
        ("le", "at most", operator.le),
    )
    for rule in TrainingConfig.model_fields[name].metadata:
        for attribute, words, holds in checks:
            bound = getattr(rule, attribute, None)
            if bound is not None and not all(holds(end, bound) for end in ends):
                raise ValueError(
                    f"'{name}' ranges over [{search.low}, {search.high}] but training.{name} "
                    f"must be {words} {bound}"
                )


class TrainingConfig(StrictModel):
    """The model family and the parameters that matter; library-specific ones go in ``extra_params``.

    The parameters are named as LightGBM names them; each family maps them to its library
    (``docs/model-families.md`` has the table).
    """

    family: str | list[str] = Field(
        default="lightgbm",
        description="lightgbm or xgboost; a list trains each and keeps the best on validation.",
    )
    n_estimators: int = Field(default=500, ge=1)
    learning_rate: float = Field(default=0.05, gt=0, le=1)
    num_leaves: int = Field(default=31, ge=2)
    max_bin: int = Field(default=255, ge=2)
    min_child_samples: int = Field(default=20, ge=1)
    feature_fraction: float = Field(default=1.0, gt=0, le=1)
    l2_regularization: float = Field(default=0.0, ge=0, description="L2 penalty on leaf weights.")
    early_stopping_rounds: int = Field(default=30, ge=0, description="0 disables early stopping.")
    class_weight: Literal["balanced"] | None = None
    seed: int = 42
    extra_params: dict[str, Any] = Field(default_factory=dict)
    threshold: ThresholdConfig | None = Field(
        default=None,
        description="Binary tasks: how the decision threshold is chosen (default: best F1 on "
        "validation). Not allowed for other tasks.",
    )
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    allocator: AllocatorConfig = Field(default_factory=AllocatorConfig)

    @field_validator("family")
    @classmethod
    def _known_families(cls, value: str | list[str]) -> str | list[str]:
        unknown = [
            name
            for name in ([value] if isinstance(value, str) else value)
            if name not in FAMILY_NAMES
        ]
        if unknown:
            raise ValueError(
                f"unknown model family {', '.join(map(repr, unknown))}; use "
                f"{' or '.join(FAMILY_NAMES)}, or a list of them to train each and keep the best"
            )
        if isinstance(value, list):
            if not value:
                raise ValueError("an empty list of families: name at least one")
            if len(set(value)) != len(value):
                raise ValueError(f"a family is listed twice in {value}")
            return value[0] if len(value) == 1 else value
        return value

    @property
    def families(self) -> list[str]:
        """The families to train, in the order given."""
        return self.family if isinstance(self.family, list) else [self.family]


def check_threshold_fits(training: TrainingConfig, task: str, where: str) -> None:
    """Refuse a threshold section for a task that has no decision threshold.

    Raises:
        ValueError: naming the key, the task and ``where`` the config came from.
    """
    if training.threshold is not None and task != "binary":
        raise ValueError(
            f"training.threshold in {where} applies to binary tasks only; this task is "
            f"{task} (remove the section: {task} models predict "
            f"{'the value' if task == 'regression' else 'the most probable class'})"
        )
