"""Preprocessing: read the source with Dask, type and clean it, split it, profile it, write it.

Plain functions do the work (tested without Prefect); the ``*_task`` objects at the bottom are
the thin Prefect wrappers the preprocess flow calls. The source is read lazily and in
partitions, twice at most: one pass for the profile and one for writing the splits.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.tracking import MlflowClient
from prefect import task

from infra.caching import CACHE_EXPIRATION, inputs_and_code
from mlops.config import DataConfig, FeatureConfig, PipelineConfig, SplitConfig, TaskType
from mlops.dataset import SPLITS, TARGET_COLUMN, DatasetRef, MetaFeatures
from mlops.errors import DataError, StorageError
from mlops.features import build_features, fit_feature_spec
from model_registry import tracking
from tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

SPLIT_COLUMN = "__split__"
PREPROCESSING_VERSION = "1"  # bump when the stored layout or cleaning rules change
MAX_CLASSES = 100


@dataclass(frozen=True)
class ColumnSchema:
    """How each raw column is typed and used."""

    target: str
    numeric: list[str]
    categorical: list[str]
    datetime: list[str]
    key_columns: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def feature_columns(self) -> list[str]:
        return [*self.numeric, *self.datetime, *self.categorical]

    @property
    def kept_columns(self) -> list[str]:
        return list(dict.fromkeys([*self.key_columns, *self.feature_columns, self.target]))


# ---------------------------------------------------------------- reading the source


def detect_format(source: str, declared: str) -> str:
    """CSV or Parquet, from the declared format or the file name."""
    if declared != "auto":
        return declared
    name = source.lower().rstrip("/")
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    return "parquet"


def open_source(cfg: DataConfig) -> dd.DataFrame:
    """Open the source lazily as a partitioned Dask DataFrame.

    CSV columns are read as text and typed by :func:`coerce_frame`, so a column whose first
    block looks like integers and a later block has blanks reads fine.

    Raises:
        DataError: if the source does not exist or cannot be read as the detected format.
    """
    fs, path = fsspec.core.url_to_fs(cfg.source, **cfg.storage_options)
    if not fs.exists(path):
        raise DataError(
            f"Data source not found: '{cfg.source}'. Check data.source in the config (or --data); "
            "relative paths are resolved from the current directory."
        )
    fmt = detect_format(cfg.source, cfg.format)
    try:
        if fmt == "csv":
            frame = dd.read_csv(
                cfg.source,
                dtype="string",
                blocksize=cfg.blocksize,
                storage_options=cfg.storage_options or None,
            )
        else:
            # One partition per row group: by default Dask reads a single file smaller than
            # 256 MiB on disk as one partition, which for compressed data means all rows at once.
            frame = dd.read_parquet(
                cfg.source, split_row_groups=True, storage_options=cfg.storage_options or None
            )
    except Exception as error:  # the readers raise many types for a corrupt file
        raise DataError(
            f"Could not read '{cfg.source}' as {fmt.upper()}: {type(error).__name__}: {error}. "
            "Check that the file is a complete, valid CSV or Parquet file (data.format can force one)."
        ) from None
    if len(frame.columns) < 2:
        raise DataError(
            f"'{cfg.source}' has {len(frame.columns)} column(s) {list(frame.columns)}; a target and at "
            "least one feature are needed. If this is a CSV with another delimiter, convert it first."
        )
    return frame


def fingerprint_source(cfg: DataConfig) -> str:
    """A hash of the source's bytes (local) or of the storage system's unique keys (remote)."""
    fs, path = fsspec.core.url_to_fs(cfg.source, **cfg.storage_options)
    files = sorted(fs.find(path)) if fs.isdir(path) else [path]
    digest = hashlib.sha256()
    local = "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"
    for name in files:
        digest.update(name.rsplit("/", 1)[-1].encode())
        if local:
            with fs.open(name, "rb") as handle:
                for block in iter(lambda h=handle: h.read(8 << 20), b""):
                    digest.update(block)
        else:
            digest.update(str(fs.ukey(name)).encode())
    return digest.hexdigest()


def dataset_version(source_fingerprint: str, config: PipelineConfig) -> str:
    """Content address of a preprocessed dataset: source bytes + every setting that shapes it."""
    settings = {
        "data": config.data.model_dump(exclude={"synthetic", "storage_options", "blocksize"}),
        "features": config.features.model_dump(),
        "split": config.split.model_dump(),
        "layout": PREPROCESSING_VERSION,
    }
    payload = source_fingerprint + json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- schema and typing


def _looks_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    if present.empty:
        return False
    return pd.to_numeric(present, errors="coerce").notna().mean() >= 0.99


def _looks_datetime(values: pd.Series) -> bool:
    present = values.dropna().astype("string")
    if (
        present.empty
        or not present.str.contains(r"\d{4}-\d{2}-\d{2}|\d{1,2}/\d{1,2}/\d{4}").mean() > 0.95
    ):
        return False
    return pd.to_datetime(present, errors="coerce", format="mixed").notna().mean() >= 0.95


def infer_schema(sample: pd.DataFrame, data: DataConfig, features: FeatureConfig) -> ColumnSchema:
    """Decide how each column is typed and used, from a sample of rows.

    Declared lists (``data.categorical`` / ``data.datetime``) win; the rest is inferred:
    numbers are numeric, ISO-like dates are datetimes, other text is categorical unless it
    has so many distinct values that it must be an identifier (then it is dropped).

    Raises:
        DataError: if the target or a declared column is not in the data.
    """
    columns = list(sample.columns)
    named = {
        "data.target": [data.target],
        "data.id_column": [data.id_column] if data.id_column else [],
        "data.categorical": data.categorical or [],
        "data.datetime": data.datetime or [],
        "features.log_transform": features.log_transform,
    }
    for key, wanted in named.items():
        absent = [c for c in wanted if c not in columns]
        if absent:
            raise DataError(
                f"Column(s) {absent} named in {key} are not in the data. "
                f"Available columns: {columns}."
            )
    dropped = {c: "listed in data.drop_columns" for c in data.drop_columns if c in columns}
    if data.id_column:
        dropped[data.id_column] = "row identifier (data.id_column)"
    candidates = [c for c in columns if c != data.target and c not in dropped]
    numeric, categorical, datetime = [], [], []
    for column in candidates:
        values = sample[column]
        if data.categorical is not None and column in data.categorical:
            categorical.append(column)
        elif (
            data.datetime is not None and column in data.datetime
        ) or pd.api.types.is_datetime64_any_dtype(values):
            datetime.append(column)
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            numeric.append(column)
        elif data.datetime is None and _looks_datetime(values):
            datetime.append(column)
        elif _looks_numeric(values):
            numeric.append(column)
        elif (
            values.nunique() > features.max_cardinality_ratio * max(len(values.dropna()), 1)
            and len(values) >= 20
        ):
            dropped[column] = "text with a distinct value on most rows (an identifier?)"
        else:
            categorical.append(column)
    key_columns = [data.id_column] if data.id_column else []
    return ColumnSchema(data.target, numeric, categorical, datetime, key_columns, dropped)


def coerce_frame(frame: pd.DataFrame, schema: ColumnSchema) -> pd.DataFrame:
    """Type the kept columns and drop rows without a target. Returns a new frame."""
    out = frame[schema.kept_columns].copy()
    for column in schema.numeric:
        values = out[column]
        if pd.api.types.is_bool_dtype(values):
            values = values.astype("float64")
        out[column] = pd.to_numeric(values, errors="coerce").astype("float64")
    for column in schema.datetime:
        if not pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = pd.to_datetime(out[column], errors="coerce", format="mixed")
    for column in [*schema.categorical, *schema.key_columns]:
        out[column] = out[column].astype("string")
    return out[out[schema.target].notna()]


def assign_split(frame: pd.DataFrame, key_columns: list[str], split: SplitConfig) -> pd.Series:
    """Deterministic split label per row from a seeded hash of its key (or of the whole row).

    The same row lands in the same split whatever the partitioning or row order.
    """
    keyed = frame[key_columns] if key_columns else frame
    hashes = pd.util.hash_pandas_object(keyed, index=False, hash_key=f"{split.seed:016d}"[-16:])
    bucket = (hashes.to_numpy() % np.uint64(1_000_000)).astype("float64") / 1_000_000
    labels = np.where(
        bucket < split.test_fraction,
        "test",
        np.where(bucket < split.test_fraction + split.validation_fraction, "validation", "train"),
    )
    return pd.Series(labels, index=frame.index, name=SPLIT_COLUMN)


def _split_partition(frame: pd.DataFrame, schema: ColumnSchema, split: SplitConfig) -> pd.DataFrame:
    typed = coerce_frame(frame, schema)
    return typed.assign(**{SPLIT_COLUMN: assign_split(typed, schema.key_columns, split)})


def typed_with_splits(
    source: dd.DataFrame, schema: ColumnSchema, split: SplitConfig
) -> dd.DataFrame:
    """The lazily typed source with a split label column."""
    return source.map_partitions(_split_partition, schema, split)


def infer_task(
    target_counts: pd.Series, target_is_numeric: bool, declared: TaskType | None, target: str
) -> tuple[TaskType, list[str] | None]:
    """The learning task and, for classification, the class labels in code order.

    Args:
        target_counts: Value counts of the (non-null) target over the whole dataset.
        target_is_numeric: Whether the target parses as numbers.
        declared: The task from config or CLI, if any.
        target: The target's name, for messages.

    Raises:
        DataError: for a target with fewer than two distinct values, or a task that does
            not fit the target.
    """
    distinct = len(target_counts)
    if distinct < 2:
        only = list(target_counts.index[:1])
        raise DataError(
            f"Target column '{target}' has {distinct} distinct value(s) {only}: there is nothing to "
            "learn. Check that data.target names the right column and that the data holds both classes."
        )
    task: TaskType
    if declared:
        task = declared
    elif not target_is_numeric:
        task = "binary" if distinct == 2 else "multiclass"
    elif distinct == 2:
        task = "binary"
    elif distinct <= 20 and _integral(target_counts.index):
        task = "multiclass"
    else:
        task = "regression"
    if task == "regression":
        if not target_is_numeric:
            raise DataError(f"Task 'regression' needs a numeric target, but '{target}' holds text.")
        return task, None
    if task == "binary" and distinct != 2:
        raise DataError(f"Task 'binary' needs 2 classes, but '{target}' has {distinct}.")
    if distinct > MAX_CLASSES:
        raise DataError(
            f"Target '{target}' has {distinct} distinct values, too many for classification "
            f"(at most {MAX_CLASSES}). Use --task regression if it is a quantity."
        )
    labels = target_counts.index
    if target_is_numeric:
        ordered = sorted(labels, key=float)
        return task, [_label(v) for v in ordered]
    return task, sorted(str(v) for v in labels)


def _integral(values: pd.Index) -> bool:
    numbers = pd.to_numeric(pd.Series(values), errors="coerce")
    return bool(numbers.notna().all() and (numbers == numbers.round()).all())


def _label(value: Any) -> str:
    number = float(value)
    return str(int(number)) if number.is_integer() else str(number)


def encode_target(values: pd.Series, task: TaskType, classes: list[str] | None) -> np.ndarray:
    """Target as model labels: class index for classification, float for regression."""
    if task == "regression" or classes is None:
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
    if pd.api.types.is_numeric_dtype(values) or _is_numeric_text(values):
        values = pd.to_numeric(values, errors="coerce").map(_label, na_action="ignore")
    codes = pd.Categorical(values.astype("string"), categories=classes).codes
    return codes.astype("float64")


def _is_numeric_text(values: pd.Series) -> bool:
    return bool(len(values)) and pd.to_numeric(values.dropna(), errors="coerce").notna().all()


# ---------------------------------------------------------------- profile (one pass)


def profile_source(typed: dd.DataFrame, schema: ColumnSchema) -> dict[str, Any]:
    """Compute, in one pass over the data, everything the profile and the feature spec need."""
    train = typed[typed[SPLIT_COLUMN] == "train"]
    target = typed[schema.target]
    jobs: dict[str, Any] = {
        "split_counts": typed[SPLIT_COLUMN].value_counts(),
        "null_counts": typed[schema.feature_columns].isna().sum(),
        "target_counts": target.value_counts(),
        "train_bytes": train[schema.feature_columns].memory_usage(deep=True, index=False).sum(),
        "category_counts": {c: train[c].value_counts() for c in schema.categorical},
    }
    if schema.numeric:
        jobs["numeric"] = typed[schema.numeric].describe()
    (computed,) = dask.compute(jobs)
    return computed


def check_columns_usable(null_counts: pd.Series, n_rows: int, source: str) -> None:
    """Refuse all-null feature columns (they usually mean a broken export).

    Raises:
        DataError: naming each all-null column.
    """
    empty = [c for c, nulls in null_counts.items() if nulls >= n_rows]
    if empty:
        raise DataError(
            f"Column(s) {empty} in '{source}' are entirely null. Fix the export, or list them in "
            "data.drop_columns if they are expected to be empty."
        )


def build_profile(stats: dict[str, Any], schema: ColumnSchema, n_rows: int) -> dict[str, Any]:
    """A JSON-friendly data profile: per column kind, nulls, ranges or cardinality."""
    columns: dict[str, Any] = {}
    for column in schema.feature_columns:
        entry: dict[str, Any] = {
            "null_fraction": float(stats["null_counts"][column]) / max(n_rows, 1)
        }
        if column in schema.numeric:
            desc = stats["numeric"][column]
            entry |= {
                "kind": "numeric",
                **{k: _finite(desc.get(k)) for k in ("min", "max", "mean", "std")},
            }
        elif column in schema.datetime:
            entry["kind"] = "datetime"
        else:
            counts = stats["category_counts"][column]
            entry |= {
                "kind": "categorical",
                "distinct_in_train": len(counts),
                "top": {str(k): int(v) for k, v in counts.head(10).items()},
            }
        columns[column] = entry
    target_counts = stats["target_counts"]
    return {
        "rows": n_rows,
        "columns": columns,
        "target": {str(k): int(v) for k, v in target_counts.head(MAX_CLASSES).items()},
        "splits": {str(k): int(v) for k, v in stats["split_counts"].items()},
    }


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None


def compute_meta_features(
    stats: dict[str, Any],
    schema: ColumnSchema,
    task: TaskType,
    classes: list[str] | None,
    n_rows: int,
) -> MetaFeatures:
    """Meta-features of the training split for the allocator."""
    cardinalities = [len(stats["category_counts"][c]) for c in schema.categorical]
    n_cells = max(n_rows * len(schema.feature_columns), 1)
    counts = stats["target_counts"]
    n_train = int(stats["split_counts"].get("train", 0))
    spec_width = len(schema.numeric) + len(schema.categorical) + 3 * len(schema.datetime)
    return MetaFeatures(
        n_rows=n_train,
        n_features=spec_width,
        n_numeric=len(schema.numeric),
        n_categorical=len(schema.categorical),
        n_datetime=len(schema.datetime),
        bytes_in_memory=int(stats["train_bytes"]),
        max_cardinality=max(cardinalities, default=0),
        mean_cardinality=float(np.mean(cardinalities)) if cardinalities else 0.0,
        sparsity=float(stats["null_counts"].sum()) / n_cells,
        task=task,
        n_classes=len(classes) if classes else 0,
        minority_class_fraction=float(counts.min() / counts.sum()) if classes else None,
    )


# ---------------------------------------------------------------- writing the splits


def _write_partition(
    frame: pd.DataFrame,
    root: str,
    target: str,
    task: TaskType,
    classes: list[str] | None,
    partition_info: dict | None = None,
) -> pd.DataFrame:
    index = partition_info["number"] if partition_info else 0
    fs, base = fsspec.core.url_to_fs(root)
    counts = {}
    encoded = frame.assign(**{TARGET_COLUMN: encode_target(frame[target], task, classes)})
    for name, part in encoded.groupby(SPLIT_COLUMN, observed=True, sort=False):
        rows = part.drop(columns=[SPLIT_COLUMN])
        fs.makedirs(f"{base}/{name}", exist_ok=True)
        with fs.open(f"{base}/{name}/part-{index:05d}.parquet", "wb") as handle:
            rows.to_parquet(handle, index=False)
        counts[str(name)] = len(rows)
    return pd.DataFrame([{s: counts.get(s, 0) for s in SPLITS}])


def write_splits(
    typed: dd.DataFrame, root: str, target: str, task: TaskType, classes: list[str] | None
) -> dict[str, int]:
    """Write each split as Parquet parts under ``root/<split>/``; returns rows per split."""
    meta = pd.DataFrame({s: pd.Series(dtype="int64") for s in SPLITS})
    counts = typed.map_partitions(_write_partition, root, target, task, classes, meta=meta)
    totals = counts.compute().sum()
    return {s: int(totals[s]) for s in SPLITS}


def read_split(dataset: DatasetRef, split: str, columns: list[str] | None = None) -> pd.DataFrame:
    """Load one split into memory (evaluation-sized data)."""
    return pd.read_parquet(dataset.split_uris[split], columns=columns)


def read_sample(dataset: DatasetRef) -> pd.DataFrame:
    """The raw input example stored with the dataset."""
    with fsspec.open(dataset.sample_uri, "rb") as handle:
        return pd.read_parquet(handle)


def load_dataset_ref(uri: str) -> DatasetRef | None:
    """The committed reference at ``uri``, or None if that version was never completed."""
    fs, path = fsspec.core.url_to_fs(f"{uri}/dataset.json")
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return DatasetRef.model_validate_json(handle.read())


def save_dataset_ref(dataset: DatasetRef, sample: pd.DataFrame) -> None:
    """Write the input example, then the reference; the reference marks the version complete."""
    fs, path = fsspec.core.url_to_fs(dataset.uri)
    with fs.open(f"{path}/sample.parquet", "wb") as handle:
        sample.to_parquet(handle, index=False)
    with fs.open(f"{path}/dataset.json", "w") as handle:
        handle.write(dataset.model_dump_json(indent=2))


def clear_incomplete(uri: str) -> None:
    """Remove a half-written dataset folder left by an interrupted run."""
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


# ---------------------------------------------------------------- the whole stage


def preprocess_dataset(config: PipelineConfig, store: str, source_fingerprint: str) -> DatasetRef:
    """Read, type, split, profile and write one dataset version (idempotent per content hash).

    Args:
        config: The use case.
        store: Root URL of the artifact store.
        source_fingerprint: From :func:`fingerprint_source`.

    Returns:
        The reference of the written (or already present) version.

    Raises:
        DataError: for any problem with the data, naming the file and the column.
    """
    version = dataset_version(source_fingerprint, config)
    uri = f"{store.rstrip('/')}/datasets/{config.name}/{version}"
    existing = load_dataset_ref(uri)
    if existing is not None:
        logger.info("Dataset version %s already exists at %s: reusing it", version, uri)
        return existing
    clear_incomplete(uri)
    started = time.perf_counter()
    source = open_source(config.data)
    sample = read_head(source, config.data.source)
    schema = infer_schema(sample, config.data, config.features)
    logger.info(
        "Reading %s in %d partition(s): %d numeric, %d categorical, %d datetime column(s); dropped %s",
        config.data.source,
        source.npartitions,
        len(schema.numeric),
        len(schema.categorical),
        len(schema.datetime),
        schema.dropped or "none",
    )
    typed = typed_with_splits(source, schema, config.split)
    stats = _compute(lambda: profile_source(typed, schema), config.data.source)
    n_rows = int(stats["split_counts"].sum())
    logger.info("Profiled %d rows in %.1fs", n_rows, time.perf_counter() - started)
    check_columns_usable(stats["null_counts"], n_rows, config.data.source)
    target_numeric = pd.api.types.is_numeric_dtype(sample[schema.target]) or _is_numeric_text(
        sample[schema.target]
    )
    task, classes = infer_task(
        stats["target_counts"], target_numeric, config.data.task, schema.target
    )
    _check_split_sizes(stats["split_counts"], config.data.source)
    spec = fit_feature_spec(
        schema.numeric,
        schema.datetime,
        {
            c: {str(k): int(v) for k, v in stats["category_counts"][c].items()}
            for c in schema.categorical
        },
        config.features.log_transform,
        config.features.datetime_parts,
        config.features.max_categories,
    )
    example = coerce_frame(sample, schema).head(5)
    build_features(example, spec)  # fail here, not at training time, if the transform breaks
    counts = _compute(
        lambda: write_splits(typed, uri, schema.target, task, classes),
        config.data.source,
        destination=uri,
    )
    dataset = DatasetRef(
        name=config.name,
        version=version,
        uri=uri,
        source_uri=config.data.source,
        target=schema.target,
        task=task,
        classes=classes,
        feature_spec=spec,
        split_uris={s: f"{uri}/{s}" for s in SPLITS},
        row_counts=counts,
        dropped_columns=schema.dropped,
        profile=build_profile(stats, schema, n_rows),
        meta_features=compute_meta_features(stats, schema, task, classes, n_rows),
    )
    save_dataset_ref(dataset, example[spec.input_columns])
    return dataset


def read_head(source: dd.DataFrame, name: str, rows: int = 5000) -> pd.DataFrame:
    return _compute(lambda: source.head(rows, npartitions=min(source.npartitions, 4)), name)


def _compute(action, source: str, destination: str | None = None):
    """Run a Dask computation over ``source``; its errors as the user's or the environment's.

    Raises:
        StorageError: writing under ``destination`` failed (a full disk, no permission): not
            the data's fault.
        DataError: anything else the parser, Arrow or the file system raised.
    """
    try:
        return action()
    except DataError:
        raise
    except OSError as error:
        if destination is not None and _written_under(error, destination):
            raise StorageError(
                f"Writing the dataset to {destination} failed: {type(error).__name__}: "
                f"{error.strerror or error}. The source was read fine; free space or fix the "
                "permissions of the artifact store (MLOPS_ARTIFACT_STORE), then run again."
            ) from None
        raise _read_failed(source, error) from None
    except (ValueError, pa.ArrowException) as error:  # parser and Arrow errors
        raise _read_failed(source, error) from None


def _written_under(error: OSError, destination: str) -> bool:
    """Whether an I/O error is about ``destination``, a folder above it or a file in it (or
    could only come from a write: a full disk, a read-only file system)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    root = fsspec.core.url_to_fs(destination)[1].rstrip("/")  # as fsspec names its files
    for name in (error.filename, error.filename2):
        path = str(name or "").rstrip("/")
        if path and (path == root or root.startswith(f"{path}/") or path.startswith(f"{root}/")):
            return True
    return False


def _read_failed(source: str, error: Exception) -> DataError:
    return DataError(
        f"Reading '{source}' failed part-way: {type(error).__name__}: {error}. "
        "The file may be truncated or corrupt, or a column holds values of mixed types."
    )


def _check_split_sizes(split_counts: pd.Series, source: str) -> None:
    small = [s for s in SPLITS if int(split_counts.get(s, 0)) == 0]
    if small:
        raise DataError(
            f"'{source}' has too few rows to fill the {small} split(s) "
            f"(rows per split: {dict(split_counts.items())}). Provide more rows."
        )


# ---------------------------------------------------------------- synthetic sources


def ensure_synthetic_source(data: DataConfig) -> bool:
    """Generate a declared synthetic source if its file is not there yet.

    Returns:
        Whether a file was generated.
    """
    synthetic = data.synthetic
    if synthetic is None or "://" in data.source or Path(data.source).exists():
        return False
    from mlops.synthetic import write_dataset

    logger.info(
        "Generating %s rows of '%s' data -> %s",
        f"{synthetic.rows:,}",
        synthetic.generator,
        data.source,
    )
    write_dataset(synthetic.generator, synthetic.rows, data.source, seed=synthetic.seed)
    return True


# ---------------------------------------------------------------- Prefect tasks


@task(name="ensure-synthetic-source")
def ensure_synthetic_source_task(data: DataConfig) -> bool:
    """Generate the config's synthetic source on first use (the demo's data)."""
    return ensure_synthetic_source(data)


@task(name="fingerprint-source", retries=2, retry_delay_seconds=[2, 10])
def fingerprint_source_task(data: DataConfig) -> str:
    """Hash the source so unchanged data maps to the same dataset version."""
    return fingerprint_source(data)


@task(
    name="preprocess-dataset",
    cache_policy=inputs_and_code("tasks.preprocessing", "mlops.features", "mlops.dataset"),
    cache_expiration=CACHE_EXPIRATION,
    result_serializer="json",
)
def preprocess_dataset_task(
    config: PipelineConfig, store: str, source_fingerprint: str
) -> DatasetRef:
    """Type, split, profile and write the dataset version."""
    return preprocess_dataset(config, store, source_fingerprint)


def log_dataset(
    client: MlflowClient,
    experiment_id: str,
    dataset: DatasetRef,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> str:
    """Record a dataset version in a ``preprocess`` run: its facts, profile and reference."""
    with tracking.stage_run(client, experiment_id, "preprocess", parent_run_id, tags) as run:
        run_id = run.run_id
        tracking.log_params(
            client,
            run_id,
            {
                "dataset.version": dataset.version,
                "dataset.uri": dataset.uri,
                "source": dataset.source_uri,
                "target": dataset.target,
                "task": dataset.task,
                "classes": dataset.classes,
                "features": len(dataset.feature_spec.feature_names),
                "dropped_columns": dataset.dropped_columns,
            },
        )
        numbers = {f"rows_{k}": v for k, v in dataset.row_counts.items()}
        numbers |= {
            f"meta_{k}": v
            for k, v in dataset.meta_features.model_dump().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        tracking.log_metrics(client, run_id, numbers)
        tracking.log_json(client, run_id, dataset.profile, "data_profile.json")
        tracking.log_json(client, run_id, dataset.model_dump(mode="json"), "dataset.json")
    return run_id


@task(name="log-dataset")
def log_dataset_task(config: PipelineConfig, dataset: DatasetRef, parent_run_id: str | None) -> str:
    """Record the dataset version in MLflow."""
    client, experiment_id = experiment_for(config)
    return log_dataset(client, experiment_id, dataset, parent_run_id, lineage_tags(config))
