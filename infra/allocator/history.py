"""The allocator's run history: one row per training run, in SQL through SQLAlchemy.

Every training run (pipeline or profiling sweep) records what the job was (dataset
meta-features and the model parameters that drive cost), the cluster it ran on, and what
happened (time, memory, status). The allocator learns from all of it. The table exports to
and imports from CSV or Parquet with the columns of :class:`RunProfile` (``run_logs.py``).
"""

from __future__ import annotations

import typing
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.sql import create_tables, open_engine

RunStatus = Literal["success", "out-of-memory", "killed", "timeout", "failed"]
Backend = Literal["local", "scheduler", "kubernetes", "simulated"]


class HistoryError(MlopsError):
    """A history file or row is invalid; nothing was written."""


class JobFields(BaseModel):
    """What a job is, independent of where it runs. Every field is optional: a pipeline run has
    them all, an imported log what it recorded (missing is None, never 0)."""

    model_config = ConfigDict(extra="forbid")

    family: str | None = Field(
        default=None,
        max_length=64,
        description="lightgbm, xgboost, spark, hadoop, ...: jobs alike. A job with the boosting "
        "fields and none is lightgbm (recorded before families could differ).",
    )
    bytes_in_memory: int | None = Field(
        default=None, ge=1, description="The job's data: the training split as pandas holds it."
    )
    n_rows: int | None = Field(default=None, ge=1, description="Rows in the training split.")
    n_features: int | None = Field(default=None, ge=1, description="Model input columns.")
    n_numeric: int | None = Field(default=None, ge=0)
    n_categorical: int | None = Field(default=None, ge=0)
    max_cardinality: int | None = Field(default=None, ge=0)
    mean_cardinality: float | None = Field(default=None, ge=0)
    sparsity: float | None = Field(default=None, ge=0, le=1, description="Share of missing cells.")
    task: Literal["binary", "multiclass", "regression"] | None = None
    n_classes: int | None = Field(default=None, ge=0, description="0 for regression.")
    n_estimators: int | None = Field(default=None, ge=1)
    num_leaves: int | None = Field(default=None, ge=2)
    max_bin: int | None = Field(default=None, ge=2)
    learning_rate: float | None = Field(default=None, gt=0)
    early_stopping_rounds: int | None = Field(default=None, ge=0)
    params: dict[str, Any] = Field(
        default_factory=dict, description="Anything else the log knew about the job."
    )

    @model_validator(mode="after")
    def _lightgbm_by_default(self) -> JobFields:
        """Rows recorded before XGBoost (and imported exports of them) name no family; only
        LightGBM jobs recorded the boosting fields then."""
        if self.family is None and self.is_boosting:
            self.family = "lightgbm"
        return self

    @property
    def trees_per_round(self) -> int:
        """One tree per class per round for multiclass (LightGBM and XGBoost), else one."""
        return max(self.n_classes or 0, 1) if self.task == "multiclass" else 1

    @property
    def is_boosting(self) -> bool:
        """Whether every field the boosting cost model needs is known (LightGBM's and
        XGBoost's jobs have them)."""
        return all(getattr(self, name) is not None for name in BOOSTING_FIELDS)


BOOSTING_FIELDS = (
    "n_rows",
    "n_features",
    "bytes_in_memory",
    "n_estimators",
    "num_leaves",
    "max_bin",
    "early_stopping_rounds",
)
"""What the boosting cost model reads; a job without one of them is predicted from its curves."""


def program(name: str | None, family: str | None) -> str | None:
    """The allocator's identity of a job: its name with its family (``fraud-detection
    [xgboost]``). One use case trained with two families is two programs, each learning its
    own cost."""
    if name is None:
        return None
    return f"{name} [{family}]" if family else name


class JobFeatures(JobFields):
    """A job to plan: its fields plus its name (the history's use case) and context."""

    name: str | None = Field(default=None, description="The job: same name, same program.")
    context: str | None = Field(default=None, description="Its input (a dataset version).")

    @property
    def program(self) -> str | None:
        """Its name with its family (:func:`program`)."""
        return program(self.name, self.family)

    @property
    def size(self) -> float | None:
        """How big its input is, in bytes (rows when only they are known), or None."""
        return float(self.bytes_in_memory or self.n_rows or 0) or None

    @property
    def size_kind(self) -> str | None:
        """What :attr:`size` counts: ``bytes``, ``rows`` or None; sizes of two kinds do not
        compare."""
        return "bytes" if self.bytes_in_memory else "rows" if self.n_rows else None


class ClusterShape(BaseModel):
    """A cluster configuration: what a candidate is and what a run used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(ge=1)
    threads_per_worker: int = Field(ge=1)
    memory_per_worker_bytes: int = Field(ge=1)
    gpu: bool = False
    machine_type: str | None = Field(default=None, description="Its nodes' type, if known.")

    @property
    def threads(self) -> int:
        """Total threads across the cluster."""
        return self.workers * self.threads_per_worker

    def label(self) -> str:
        """Short human form, e.g. ``2x1 @ 2.0 GiB`` or ``6 x c4.large`` (``+GPU`` with one)."""
        gpu = " +GPU" if self.gpu else ""
        if self.machine_type:
            return f"{self.workers} x {self.machine_type}{gpu}"
        gib = self.memory_per_worker_bytes / 2**30
        return f"{self.workers}x{self.threads_per_worker} @ {gib:.2g} GiB{gpu}"


class WithShape:
    """For models that carry a shape's fields: the :class:`ClusterShape` they describe."""

    @property
    def shape(self) -> ClusterShape:
        """The cluster shape of these fields."""
        return ClusterShape(
            workers=self.workers,
            threads_per_worker=self.threads_per_worker,
            memory_per_worker_bytes=self.memory_per_worker_bytes,
            gpu=self.gpu,
            machine_type=getattr(self, "machine_type", None),
        )


class RunProfile(JobFields, WithShape):
    """One recorded training run: the job, the cluster it ran on, and the measured outcome."""

    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = Field(default="pipeline", description="pipeline, sweep, import, ...")
    use_case: str = Field(min_length=1, description="The job (runs of one program share it).")
    dataset_version: str | None = Field(
        default=None, min_length=1, description="The job's context: its input's version or size."
    )
    machine_type: str | None = Field(default=None, description="A name in the machine catalogue.")
    workers: int = Field(ge=1, description="Dask workers, or nodes of a foreign cluster.")
    threads_per_worker: int = Field(ge=1)
    memory_per_worker_bytes: int = Field(ge=1)
    gpu: bool = False
    backend: Backend = "local"
    host_cpus: int | None = Field(
        default=None, ge=1, description="CPU cores the workers shared on one machine."
    )
    status: RunStatus
    startup_s: float | None = Field(default=None, ge=0, description="Starting the cluster.")
    wall_time_s: float = Field(ge=0, description="The job's run, data loading included.")
    iterations: int | None = Field(default=None, ge=0, description="Boosting rounds run.")
    time_per_iteration_s: float | None = Field(default=None, ge=0)
    peak_memory_bytes: int | None = Field(
        default=None,
        gt=0,
        description="Largest peak resident memory over the workers; empty when not measured.",
    )
    final_metric: float | None = None
    metric_name: str | None = None
    predicted_wall_time_s: float | None = Field(default=None, ge=0)
    predicted_peak_memory_bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _from_job(cls, data: Any) -> Any:
        """Accept a :class:`JobFeatures` dump: its name and context are the use case and the
        dataset version unless those are given."""
        if isinstance(data, dict) and ("name" in data or "context" in data):
            data = dict(data)
            name, context = data.pop("name", None), data.pop("context", None)
            if name is not None:
                data.setdefault("use_case", name)
            if context is not None:
                data.setdefault("dataset_version", context)
        return data

    def model_copy(self, *, update: dict[str, Any] | None = None, deep: bool = False) -> RunProfile:
        """A copy (with ``update``), its cached :attr:`job` dropped so that it follows."""
        copy = super().model_copy(update=update, deep=deep)
        copy.__dict__.pop("job", None)
        return copy

    @cached_property
    def job(self) -> JobFeatures:
        """The job part of the row (rows are not changed once made)."""
        fields = self.model_dump(include=set(JobFields.model_fields))
        return JobFeatures(**fields, name=self.use_case, context=self.dataset_version)

    @property
    def total_time_s(self) -> float:
        """What the run occupied its cluster for: start-up (when known) plus the run."""
        return (self.startup_s or 0.0) + self.wall_time_s

    @property
    def program(self) -> str:
        """Its use case with its family (:func:`program`)."""
        return program(self.use_case, self.family)

    @property
    def context_key(self) -> tuple[str, str]:
        """The program and its context: the runs of one program on one input."""
        return self.program, self.dataset_version or ""


COLUMNS: tuple[str, ...] = tuple(RunProfile.model_fields)
"""The documented columns of the history table and of its CSV/Parquet exports, in order."""

_SQL_TYPES: dict[Any, Any] = {
    dict: sa.JSON,
    int: sa.BigInteger,
    float: sa.Float,
    bool: sa.Boolean,
    str: sa.String(128),
    datetime: sa.DateTime(timezone=True),
}


def _sql_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) is dict:
        return _SQL_TYPES[dict]
    for python_type, sql_type in _SQL_TYPES.items():
        if annotation is python_type or python_type in getattr(annotation, "__args__", ()):
            return sql_type
    return sa.String(32)  # the Literal columns


metadata = sa.MetaData()
runs_table = sa.Table(
    "allocator_runs",
    metadata,
    *(
        sa.Column(name, _sql_type(field.annotation), primary_key=name == "run_id")
        for name, field in RunProfile.model_fields.items()
    ),
)


def add_missing_columns(engine: sa.Engine) -> None:
    """Add the columns a history written by an older version lacks (all of them nullable)."""
    present = {c["name"] for c in sa.inspect(engine).get_columns(runs_table.name)}
    missing = [c for c in runs_table.columns if c.name not in present]
    if not missing:
        return
    for column in missing:
        kind = column.type.compile(dialect=engine.dialect)
        try:
            with engine.begin() as connection:
                connection.execute(
                    sa.text(f"ALTER TABLE {runs_table.name} ADD COLUMN {column.name} {kind}")
                )
        except sa.exc.DBAPIError:  # another process added it first
            present = {c["name"] for c in sa.inspect(engine).get_columns(runs_table.name)}
            if column.name not in present:
                raise


def _stored(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the model reads it: None for what older versions wrote as 0 or left out."""
    row = {k: v for k, v in row.items() if v is not None}
    if not row.get("peak_memory_bytes"):
        row.pop("peak_memory_bytes", None)  # older versions wrote 0 for "not measured"
    return row


class HistoryStore:
    """The run history in any SQLAlchemy database (SQLite under ``.mlops/`` by default)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(url)
        create_tables(metadata, self.engine)
        add_missing_columns(self.engine)

    def record(self, profile: RunProfile) -> None:
        """Add one run."""
        self.add_all([profile])

    def add_all(self, profiles: Iterable[RunProfile]) -> int:
        """Add runs in one transaction (all or none); returns how many."""
        rows = [p.model_dump() for p in profiles]
        if rows:
            with self.engine.begin() as connection:
                connection.execute(runs_table.insert(), rows)
        return len(rows)

    def runs(self, use_case: str | None = None) -> list[RunProfile]:
        """Every recorded run (of one use case if given), oldest first."""
        query = sa.select(runs_table).order_by(runs_table.c.recorded_at)
        if use_case is not None:
            query = query.where(runs_table.c.use_case == use_case)
        with self.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [RunProfile.model_validate(_stored(dict(row))) for row in rows]

    def run_ids(self) -> set[str]:
        """The ids of every recorded run."""
        with self.engine.connect() as connection:
            return set(connection.execute(sa.select(runs_table.c.run_id)).scalars())

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()
