"""A dataset version: the typed reference stages pass to each other, and its files.

:class:`DatasetRef` holds URIs and facts, never data. The functions below read and write a
version's files in the artifact store (opened by :mod:`mlops.storage`): ``<split>/part-*.parquet``
per split, ``sample.parquet`` (the model's input example) and ``dataset.json``, written last,
which marks the version complete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from .config import TaskType
from .features import FeatureSpec
from .storage import open_url

if TYPE_CHECKING:
    import dask.dataframe as dd

TARGET_COLUMN = "__target__"
"""Encoded target in the split files: class index for classification, the value for regression."""
SPLIT_COLUMN = "__split__"
"""Split label of a row while it is written; not stored in the split files."""

SPLITS = ("train", "validation", "test")


class MetaFeatures(BaseModel):
    """Dataset facts that drive training cost; the allocator learns from these."""

    model_config = ConfigDict(extra="forbid")

    n_rows: int = Field(description="Rows in the training split.")
    n_features: int
    n_numeric: int
    n_categorical: int
    n_datetime: int
    bytes_in_memory: int = Field(description="Training split, raw columns, as pandas holds them.")
    max_cardinality: int
    mean_cardinality: float
    sparsity: float = Field(description="Share of missing cells in the raw feature columns.")
    task: TaskType
    n_classes: int = Field(description="0 for regression.")
    minority_class_fraction: float | None = None


class DatasetRef(BaseModel):
    """A preprocessed dataset version: where its splits are and what is in them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = Field(description="Content hash of source + preprocessing settings.")
    uri: str
    source_uri: str
    target: str
    task: TaskType
    classes: list[str] | None = Field(default=None, description="Class labels, index = code.")
    feature_spec: FeatureSpec
    split_uris: dict[str, str]
    row_counts: dict[str, int]
    dropped_columns: dict[str, str] = Field(default_factory=dict, description="column -> why")
    source_types: dict[str, str] = Field(
        default_factory=dict,
        description="column -> its type in the source (integer, float, boolean, datetime, "
        "string); the split files store every numeric column as float64.",
    )
    profile: dict[str, Any]
    meta_features: MetaFeatures

    @property
    def n_classes(self) -> int:
        """Number of classes, 0 for regression."""
        return len(self.classes) if self.classes else 0

    @property
    def sample_uri(self) -> str:
        """A few raw rows (the model's input example)."""
        return f"{self.uri}/sample.parquet"


# ---------------------------------------------------------------- reading a version


def read_split(dataset: DatasetRef, split: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Load one split into memory (evaluation-sized data)."""
    fs, path = open_url(dataset.split_uris[split])
    return pd.read_parquet(path, columns=columns, filesystem=fs)


def read_split_head(dataset: DatasetRef, split: str, columns: list[str], rows: int) -> pd.DataFrame:
    """The first ``rows`` rows of one split (in :func:`read_split`'s order), only ``columns``:
    only the files and row groups that hold them are read."""
    fs, path = open_url(dataset.split_uris[split])
    files = pads.dataset(path, filesystem=fs, format="parquet")
    return files.head(rows, columns=columns).to_pandas()


def read_sample(dataset: DatasetRef) -> pd.DataFrame:
    """The raw input example stored with the dataset."""
    fs, path = open_url(dataset.sample_uri)
    with fs.open(path, "rb") as handle:
        return pd.read_parquet(handle)


def read_split_schema(dataset: DatasetRef, split: str) -> pa.Schema:
    """The column types of one split's files, from their Parquet footers (no rows are read).

    The parts' schemas are unified, so a column that is empty (``null``) in one part takes its
    type from the others. A split with no files has an empty schema.
    """
    fs, path = open_url(dataset.split_uris[split])
    parts = sorted(fs.glob(f"{path}/*.parquet"))
    schemas = []
    for part in parts:
        with fs.open(part, "rb") as handle:
            schemas.append(pq.read_schema(handle).remove_metadata())
    return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])


NUMBERS_STORED_AS_FLOAT = {"integer": pa.int64(), "boolean": pa.bool_()}
"""Source kinds that the split files store as float64 (the features read numbers as floats)."""


def split_column_types(dataset: DatasetRef, split: str) -> pa.Schema:
    """The columns of one split as a person knows them: the type the files store, except that
    a numeric column the source held as whole numbers or true/false (stored as float64) shows
    as such. A version written before :attr:`DatasetRef.source_types` shows the stored types."""
    stored = read_split_schema(dataset, split)
    fields = []
    for field in stored:
        kind = dataset.source_types.get(field.name)
        if kind in NUMBERS_STORED_AS_FLOAT and pa.types.is_floating(field.type):
            field = field.with_type(NUMBERS_STORED_AS_FLOAT[kind])
        fields.append(field)
    return pa.schema(fields)


def load_dataset_ref(uri: str) -> DatasetRef | None:
    """The committed reference at ``uri``, or None if that version was never completed."""
    fs, path = open_url(f"{uri}/dataset.json")
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return DatasetRef.model_validate_json(handle.read())


# ---------------------------------------------------------------- writing a version


def write_split_partition(
    frame: pd.DataFrame,
    root: str,
    options: dict[str, Any],
    partition_info: dict | None = None,
) -> pd.DataFrame:
    """Write one partition's rows as ``root/<split>/part-<n>.parquet``; one row of counts per split.

    Args:
        frame: Rows with their split label in :data:`SPLIT_COLUMN` (dropped when written).
        root: The dataset version's folder.
        options: Storage options of the artifact store (resolved by the caller, so a worker
            process need not read the settings).
        partition_info: Given by Dask: the partition's number names its files.
    """
    index = partition_info["number"] if partition_info else 0
    fs, base = open_url(root, options)
    counts = {}
    for name, part in frame.groupby(SPLIT_COLUMN, observed=True, sort=False):
        rows = part.drop(columns=[SPLIT_COLUMN])
        fs.makedirs(f"{base}/{name}", exist_ok=True)
        with fs.open(f"{base}/{name}/part-{index:05d}.parquet", "wb") as handle:
            rows.to_parquet(handle, index=False)
        counts[str(name)] = len(rows)
    return pd.DataFrame([{s: counts.get(s, 0) for s in SPLITS}])


def write_splits(frame: dd.DataFrame, root: str, options: dict[str, Any]) -> dict[str, int]:
    """Write each split as Parquet parts under ``root/<split>/``; returns rows per split."""
    meta = pd.DataFrame({s: pd.Series(dtype="int64") for s in SPLITS})
    counts = frame.map_partitions(write_split_partition, root, options, meta=meta)
    totals = counts.compute().sum()
    return {s: int(totals[s]) for s in SPLITS}


def save_dataset_ref(dataset: DatasetRef, sample: pd.DataFrame) -> None:
    """Write the input example, then the reference; the reference marks the version complete."""
    fs, path = open_url(dataset.uri)
    with fs.open(f"{path}/sample.parquet", "wb") as handle:
        sample.to_parquet(handle, index=False)
    with fs.open(f"{path}/dataset.json", "w") as handle:
        handle.write(dataset.model_dump_json(indent=2))


def clear_incomplete(uri: str) -> None:
    """Remove a half-written dataset folder left by an interrupted run."""
    fs, path = open_url(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
