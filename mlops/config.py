"""Use-case configuration: one YAML file per use case, parsed into strict pydantic models.

The parsed :class:`PipelineConfig` is the parameter of every flow, so Prefect validates it and
the Prefect UI renders it as a form. ``configs/README.md`` documents every key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.gates import KNOWN_METRICS
from prefect_mlops.mlops.training_config import (
    AllocatorConfig,
    ClusterConfig,
    StrictModel,
    TaskType,
    ThresholdConfig,
    TrainingConfig,
    TuningConfig,
    check_threshold_fits,
)

__all__ = [  # the training section's models live in mlops.training_config; importable here too
    "AllocatorConfig",
    "ClusterConfig",
    "PipelineConfig",
    "TaskType",
    "ThresholdConfig",
    "TrainingConfig",
    "TuningConfig",
    "load_config",
    "parse_config",
    "resolve_config",
]

DatetimePart = Literal[
    "year", "month", "day", "dayofweek", "dayofyear", "hour", "minute", "is_weekend"
]
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class SyntheticSource(StrictModel):
    """Generate the source with a bundled generator when the file does not exist yet."""

    generator: Literal["fraud", "car_dealership"]
    rows: int = Field(gt=0, description="Number of rows to generate.")
    seed: int = 0


class DataConfig(StrictModel):
    """Where the data comes from and how to read it."""

    source: str = Field(description="Local path or fsspec URL of a CSV or Parquet file/folder.")
    format: Literal["auto", "csv", "parquet"] = "auto"
    target: str = Field(description="Name of the column to predict.")
    task: TaskType | None = Field(default=None, description="Inferred from the target if unset.")
    id_column: str | None = Field(
        default=None, description="Row key: drives the deterministic split, never a feature."
    )
    drop_columns: list[str] = Field(default_factory=list)
    categorical: list[str] | None = Field(default=None, description="Inferred if unset.")
    datetime: list[str] | None = Field(default=None, description="Inferred if unset.")
    storage_options: dict[str, Any] = Field(default_factory=dict)
    blocksize: str = Field(default="64MB", description="Partition size when reading CSV.")
    synthetic: SyntheticSource | None = None


class FeatureConfig(StrictModel):
    """Feature engineering, applied by the same code at training and serving time."""

    datetime_parts: list[DatetimePart] = Field(
        default_factory=lambda: ["month", "dayofweek", "hour"]
    )
    log_transform: list[str] = Field(default_factory=list)
    max_categories: int = Field(default=1000, gt=1, description="Most frequent values kept.")
    max_cardinality_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Inferred text columns with more distinct values than this share of rows "
        "are treated as identifiers and dropped.",
    )


class SplitConfig(StrictModel):
    """Deterministic hash-based train/validation/test split."""

    validation_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = 42


DataCheck = Literal[
    "columns",
    "types",
    "nulls",
    "ranges",
    "categories",
    "row_count",
    "class_balance",
    "distribution",
]
ALL_DATA_CHECKS: tuple[DataCheck, ...] = get_args(DataCheck)


class ValueRange(StrictModel):
    """Declared hard bounds of a numeric column; every value must fall inside."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ValueRange:
        if self.min is None and self.max is None:
            raise ValueError("give at least one of 'min' and 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class DataGateConfig(StrictModel):
    """Great Expectations checks on a new dataset version before anything trains on it.

    The suite is derived from the columns declared in ``data`` and a reference profile of
    the current champion's training data (the first accepted dataset when there is none).
    Tolerances are fractions of rows unless they say otherwise.
    """

    enabled: bool = True
    checks: list[DataCheck] = Field(
        default_factory=lambda: list(ALL_DATA_CHECKS), description="Which kinds of check apply."
    )
    not_null: list[str] = Field(default_factory=list, description="Columns never allowed a null.")
    value_ranges: dict[str, ValueRange] = Field(
        default_factory=dict, description="Declared bounds per numeric column (every row)."
    )
    ignore_columns: list[str] = Field(
        default_factory=list, description="No range, category or distribution checks on these."
    )
    max_null_increase: float = Field(
        default=0.05, ge=0, le=1, description="Null share may exceed the reference's by this."
    )
    max_out_of_range: float = Field(
        default=0.001,
        ge=0,
        le=1,
        description="Share of values allowed outside the reference range.",
    )
    max_unseen_categories: float = Field(
        default=0.01, ge=0, le=1, description="Share of values allowed outside the reference set."
    )
    max_listed_categories: int = Field(
        default=1000, ge=1, description="Columns with more reference values get no value-set check."
    )
    min_rows_ratio: float | None = Field(
        default=0.5, ge=0, description="Rows must be at least this times the reference's."
    )
    max_rows_ratio: float | None = Field(
        default=10.0, gt=0, description="Rows must be at most this times the reference's."
    )
    min_rows: int | None = Field(default=None, ge=0, description="Absolute lower row bound.")
    max_rows: int | None = Field(default=None, ge=1, description="Absolute upper row bound.")
    max_class_share_change: float = Field(
        default=0.5, ge=0, description="A class's share may move by this fraction of itself..."
    )
    max_class_share_shift: float = Field(
        default=0.1, ge=0, le=1, description="...and by at most this many share points."
    )
    max_mean_shift: float = Field(
        default=0.25, ge=0, description="Mean may move by this many reference standard deviations."
    )
    max_stdev_ratio: float = Field(
        default=1.5, ge=1, description="Standard deviation may grow or shrink by this factor."
    )
    max_median_shift: float = Field(
        default=0.25, ge=0, description="Median may move by this many reference IQRs."
    )
    max_rows_validated: int | None = Field(
        default=1_000_000,
        ge=1000,
        description="Larger datasets are validated on a seeded sample of this many rows "
        "(the row count is still exact); null validates every row.",
    )


class ModelGateConfig(StrictModel):
    """Champion/challenger checks on a trained candidate; ``null`` turns a check off."""

    enabled: bool = True
    primary_metric: str | None = Field(
        default=None, description="Default: roc_auc (binary), f1 (multiclass), rmse (regression)."
    )
    metric_floors: dict[str, float] | None = Field(
        default=None,
        description="Absolute bounds on test metrics; a ceiling for rmse, mae and log_loss. "
        "Default: chance-level floors for the task.",
    )
    max_regression: float | None = Field(
        default=0.01, ge=0, description="Largest relative drop of the primary metric vs champion."
    )
    slices: list[str] = Field(
        default_factory=list, description="Categorical columns whose values are checked one by one."
    )
    slice_max_regression: float = Field(
        default=0.05, ge=0, description="Largest relative drop of the primary metric on a slice."
    )
    slice_min_rows: int = Field(default=200, ge=1, description="Smaller slices are not judged.")
    slice_min_class_rows: int = Field(
        default=10, ge=1, description="Classification slices need this many rows of each class."
    )
    max_latency_p95_ms: float | None = Field(
        default=50.0, gt=0, description="Budget for the p95 time of a single-row predict."
    )
    latency_samples: int = Field(default=200, ge=20, description="Single-row predicts timed.")
    max_model_size_mb: float | None = Field(
        default=100.0, gt=0, description="Budget for the logged model's files."
    )

    @field_validator("primary_metric")
    @classmethod
    def _known_primary(cls, value: str | None) -> str | None:
        if value is not None and value not in KNOWN_METRICS:
            raise ValueError(f"unknown metric '{value}'; use one of {sorted(KNOWN_METRICS)}")
        return value

    @field_validator("metric_floors")
    @classmethod
    def _known_floors(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        unknown = sorted(set(value or {}) - KNOWN_METRICS)
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; use any of {sorted(KNOWN_METRICS)}")
        return value


class DeployConfig(StrictModel):
    """The deploy stage: the gated candidate becomes champion, goes live, is checked, or is rolled back.

    The serving instances it reloads and checks are settings (``MLOPS_SERVING_URLS``), not
    part of the use case; without any, the check runs on the serving code in-process.
    """

    smoke_rows: int = Field(
        default=200,
        ge=1,
        description="Held-out test rows each instance must predict as the registry does.",
    )
    latency_requests: int = Field(
        default=50, ge=5, description="Single-row requests timed on each instance."
    )
    max_latency_p95_ms: float = Field(
        default=100.0, gt=0, description="Budget for the p95 of those requests, network included."
    )
    reload_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="How long an instance may take to load and check the version.",
    )


class MonitoringConfig(StrictModel):
    """The drift monitor: recent serving traffic against the champion's training data.

    A numeric feature drifts when its PSI (over reference deciles) or its two-sample KS
    statistic crosses a threshold; a categorical feature on PSI over its reference
    categories. Datetime columns are not compared: time moves on by itself.
    """

    window_hours: float = Field(
        default=24.0, gt=0, description="Traffic logged in this many recent hours is compared."
    )
    min_rows: int = Field(
        default=500, ge=10, description="Fewer logged rows than this: too little traffic to judge."
    )
    max_reference_rows: int = Field(
        default=20_000, ge=100, description="Training rows sampled as the reference."
    )
    bins: int = Field(default=10, ge=2, le=100, description="PSI bins of a numeric feature.")
    psi_threshold: float = Field(
        default=0.2, gt=0, description="PSI at or above this is drift (0.1-0.2: moderate shift)."
    )
    ks_threshold: float = Field(
        default=0.15, gt=0, le=1, description="KS statistic at or above this is drift."
    )
    min_drifted_features: int = Field(
        default=1, ge=1, description="Drifted features that make the model drifted."
    )
    prediction_psi_threshold: float = Field(
        default=0.2, gt=0, description="PSI of the prediction distribution that is drift."
    )
    cooldown_minutes: float = Field(
        default=60.0,
        ge=0,
        description="After a drift event, no other is emitted for the model for this long.",
    )
    min_labelled_rows: int = Field(
        default=200, ge=10, description="Delayed labels needed to judge performance."
    )
    max_metric_drop: float = Field(
        default=0.05,
        ge=0,
        description="Primary metric on delayed labels this far below the champion's test "
        "metric (relative) is degradation.",
    )


class ModelConfig(StrictModel):
    """How the model is named in the MLflow registry."""

    name: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _MODEL_NAME.match(value):
            raise ValueError("use letters, digits, '.', '_' or '-' (at most 100 characters)")
        return value


class TrackingConfig(StrictModel):
    """MLflow experiment; the tracking URI comes from settings unless set here."""

    experiment: str | None = Field(default=None, description="Defaults to the use-case name.")
    tracking_uri: str | None = None


class PipelineConfig(StrictModel):
    """One use case: the parameter of every pipeline flow."""

    name: str = Field(description="Use-case name, e.g. 'fraud-detection'.")
    description: str = ""
    data: DataConfig
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    model: ModelConfig
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    data_gate: DataGateConfig = Field(default_factory=DataGateConfig)
    model_gate: ModelGateConfig = Field(default_factory=ModelGateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    _origin: str | None = PrivateAttr(default=None)

    @property
    def origin(self) -> str:
        """Where the config was read from (its file), for messages; else the use case's name."""
        return self._origin or f"use case '{self.name}'"

    @model_validator(mode="after")
    def _target_is_not_dropped(self) -> PipelineConfig:
        if self.data.target in self.data.drop_columns:
            raise ValueError(
                f"data.target '{self.data.target}' is also listed in data.drop_columns"
            )
        return self

    @model_validator(mode="after")
    def _threshold_fits_the_task(self) -> PipelineConfig:
        if self.data.task is not None:  # an inferred task is checked before training
            check_threshold_fits(self.training, self.data.task, f"use case '{self.name}'")
        return self

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment the pipeline logs to."""
        return self.tracking.experiment or self.name


def _format_validation_error(error: ValidationError, origin: str) -> str:
    problems = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{key}'")
        elif item["type"] == "missing":
            problems.append(f"missing required key '{key}'")
        elif not item["loc"]:  # a check across sections: its message names the keys
            problems.append(item["msg"].removeprefix("Value error, "))
        else:
            shown = item.get("input")
            problems.append(f"key '{key}': {item['msg']} (got {shown!r})")
    return f"Invalid configuration in {origin}: " + "; ".join(problems) + "."


def parse_config(raw: dict[str, Any], origin: str = "<config>") -> PipelineConfig:
    """Validate a config mapping.

    Args:
        raw: The mapping read from YAML (or built in code).
        origin: Where it came from, named in error messages.

    Returns:
        The validated config.

    Raises:
        ConfigError: naming the file and every unknown, missing or mistyped key.
    """
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, origin)) from None
    config._origin = origin
    return config


def load_config(path: str | Path) -> PipelineConfig:
    """Read and validate a use-case YAML file.

    Raises:
        ConfigError: if the file is missing, is not a YAML mapping, or fails validation.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}. Pass an existing YAML file to --config.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of keys, not {type(raw).__name__}."
        )
    return parse_config(raw, origin=str(path))


def resolve_config(config: PipelineConfig | str | Path) -> PipelineConfig:
    """The config itself, or the use-case YAML it names.

    A deployment's parameter can be either: a path such as ``configs/fraud_detection.yaml``
    (relative to the project directory the flow runs in) or the whole config as a mapping.

    Raises:
        ConfigError: if a named file is missing or invalid.
    """
    if isinstance(config, PipelineConfig):
        return config
    return load_config(config)
