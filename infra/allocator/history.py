"""The allocator's run history: one row per training run, in SQL through SQLAlchemy.

Every training run (pipeline or profiling sweep) records what the job was (dataset
meta-features and the model parameters that drive cost), the cluster it ran on, and what
happened (time, memory, status). The allocator learns from all of it. The table exports to
and imports from CSV or Parquet with the columns of :class:`RunProfile`; an import is checked
row by row and written in one transaction, so a bad file changes nothing.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mlops.errors import MlopsError
from mlops.sql import create_tables, open_engine

RunStatus = Literal["success", "out-of-memory", "killed", "timeout", "failed"]
Backend = Literal["local", "scheduler", "kubernetes", "simulated"]


class HistoryError(MlopsError):
    """A history file or row is invalid; nothing was written."""


class JobFeatures(BaseModel):
    """What a training job is, independent of where it runs: the inputs of every prediction."""

    model_config = ConfigDict(extra="forbid")

    n_rows: int = Field(ge=1, description="Rows in the training split.")
    n_features: int = Field(ge=1, description="Model input columns after feature engineering.")
    n_numeric: int = Field(ge=0)
    n_categorical: int = Field(ge=0)
    bytes_in_memory: int = Field(ge=1, description="Training split as pandas holds it.")
    max_cardinality: int = Field(ge=0)
    mean_cardinality: float = Field(ge=0)
    sparsity: float = Field(ge=0, le=1, description="Share of missing cells.")
    task: Literal["binary", "multiclass", "regression"]
    n_classes: int = Field(ge=0, description="0 for regression.")
    n_estimators: int = Field(ge=1)
    num_leaves: int = Field(ge=2)
    max_bin: int = Field(ge=2)
    learning_rate: float = Field(gt=0)
    early_stopping_rounds: int = Field(ge=0)

    @property
    def trees_per_round(self) -> int:
        """LightGBM grows one tree per class per round for multiclass, else one."""
        return max(self.n_classes, 1) if self.task == "multiclass" else 1


class ClusterShape(BaseModel):
    """A cluster configuration: what a candidate is and what a run used."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workers: int = Field(ge=1)
    threads_per_worker: int = Field(ge=1)
    memory_per_worker_bytes: int = Field(ge=1)
    gpu: bool = False

    @property
    def threads(self) -> int:
        """Total threads across the cluster."""
        return self.workers * self.threads_per_worker

    def label(self) -> str:
        """Short human form, e.g. ``2x1 @ 2.0 GiB`` (``+GPU`` when it has one)."""
        gib = self.memory_per_worker_bytes / 2**30
        return f"{self.workers}x{self.threads_per_worker} @ {gib:.2g} GiB" + (
            " +GPU" if self.gpu else ""
        )


class WithShape:
    """For models that carry a shape's four fields: the :class:`ClusterShape` they describe."""

    @property
    def shape(self) -> ClusterShape:
        """The cluster shape of these fields."""
        return ClusterShape(
            workers=self.workers,
            threads_per_worker=self.threads_per_worker,
            memory_per_worker_bytes=self.memory_per_worker_bytes,
            gpu=self.gpu,
        )


class RunProfile(JobFeatures, WithShape):
    """One recorded training run: the job, the cluster it ran on, and the measured outcome."""

    run_id: str = Field(default_factory=lambda: uuid.uuid4().hex, min_length=1, max_length=64)
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    source: str = Field(default="pipeline", description="pipeline, sweep, import, ...")
    use_case: str = Field(min_length=1)
    dataset_version: str = Field(min_length=1)
    workers: int = Field(ge=1)
    threads_per_worker: int = Field(ge=1)
    memory_per_worker_bytes: int = Field(ge=1)
    gpu: bool = False
    backend: Backend = "local"
    host_cpus: int = Field(ge=1, description="CPU cores the cluster's workers shared.")
    status: RunStatus
    startup_s: float = Field(ge=0, description="Starting the cluster (0 for an existing one).")
    wall_time_s: float = Field(ge=0, description="Training, data loading included.")
    iterations: int = Field(ge=0, description="Boosting rounds run.")
    time_per_iteration_s: float | None = Field(default=None, ge=0)
    peak_memory_bytes: int | None = Field(
        default=None, ge=0, description="Largest peak resident memory over the workers."
    )
    final_metric: float | None = None
    metric_name: str | None = None
    predicted_wall_time_s: float | None = Field(default=None, ge=0)
    predicted_peak_memory_bytes: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _successes_are_measured(self) -> RunProfile:
        if self.status == "success" and (self.iterations < 1 or self.peak_memory_bytes is None):
            raise ValueError("a successful run needs iterations >= 1 and peak_memory_bytes")
        return self

    @property
    def job(self) -> JobFeatures:
        """The job part of the row."""
        return JobFeatures.model_validate(self.model_dump(include=set(JobFeatures.model_fields)))

    @property
    def total_time_s(self) -> float:
        """What the run occupied its cluster for: start-up plus training."""
        return self.startup_s + self.wall_time_s


COLUMNS: tuple[str, ...] = tuple(RunProfile.model_fields)
"""The documented columns of the history table and of its CSV/Parquet exports, in order."""

_SQL_TYPES: dict[Any, Any] = {
    int: sa.BigInteger,
    float: sa.Float,
    bool: sa.Boolean,
    str: sa.String(128),
    datetime: sa.DateTime(timezone=True),
}


def _sql_type(annotation: Any) -> Any:
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


class HistoryStore:
    """The run history in any SQLAlchemy database (SQLite under ``.mlops/`` by default)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = open_engine(url)
        create_tables(metadata, self.engine)

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
        return [RunProfile.model_validate(dict(row)) for row in rows]

    def run_ids(self) -> set[str]:
        """The ids of every recorded run."""
        with self.engine.connect() as connection:
            return set(connection.execute(sa.select(runs_table.c.run_id)).scalars())

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()


def profiles_frame(profiles: Iterable[RunProfile]) -> pd.DataFrame:
    """Runs as a table with the documented columns."""
    return pd.DataFrame([p.model_dump() for p in profiles], columns=list(COLUMNS))


def export_history(store: HistoryStore, path: Path) -> int:
    """Write every run to ``path`` (``.csv`` or ``.parquet``); returns the row count."""
    frame = profiles_frame(store.runs())
    path.parent.mkdir(parents=True, exist_ok=True)
    if _format(path) == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return len(frame)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise HistoryError(f"{path}: use a .csv or .parquet file for the allocator history.")


def read_history_file(path: Path) -> list[RunProfile]:
    """Read and check every row of an exported history.

    Raises:
        HistoryError: for a missing file, an unknown or missing column, or an invalid row,
            naming the row (1 = first data row) and the field.
    """
    if not path.is_file():
        raise HistoryError(f"History file not found: {path}")
    try:
        frame = pd.read_parquet(path) if _format(path) == "parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise HistoryError(f"{path} could not be read as {_format(path)}: {error}") from None
    unknown = sorted(set(frame.columns) - set(COLUMNS))
    if unknown:
        raise HistoryError(
            f"{path}: unknown column(s) {unknown}; the history columns are listed in "
            "docs/allocator.md."
        )
    return [_row_profile(record, index, path) for index, record in enumerate(_records(frame), 1)]


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records = frame.astype(object).to_dict(orient="records")
    return [
        {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        for row in records
    ]


def _row_profile(record: dict[str, Any], index: int, path: Path) -> RunProfile:
    try:
        return RunProfile.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(row)"
        value = record.get(field, "<missing>")
        raise HistoryError(
            f"{path}, row {index}: field '{field}' {first['msg'].lower()} (got {value!r}). "
            "Nothing was imported."
        ) from None


def import_history(store: HistoryStore, path: Path) -> int:
    """Add every row of ``path`` to the store in one transaction; returns the row count.

    Raises:
        HistoryError: if any row is invalid or a run id is already recorded; nothing is written.
    """
    profiles = read_history_file(path)
    known = store.run_ids()
    clashes = [i for i, p in enumerate(profiles, 1) if p.run_id in known]
    if clashes:
        raise HistoryError(
            f"{path}, row {clashes[0]}: field 'run_id' {profiles[clashes[0] - 1].run_id!r} is "
            f"already in the history ({len(clashes)} such row(s)). Nothing was imported."
        )
    try:
        return store.add_all(profiles)
    except sa.exc.IntegrityError as error:
        raise HistoryError(f"{path}: duplicate run ids in the file. Nothing was imported.") from (
            error
        )
