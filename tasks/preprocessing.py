"""Preprocessing: read the source, type and clean it, split it, profile it, write it.

Plain functions do the work (tested without Prefect); the Prefect tasks at the bottom, each
named like its function, are the thin wrappers the preprocess flow calls. The source is read
once, into memory, in its partitions (:func:`mlops.source.read_source`: Arrow with threads for a
Parquet file, Dask for CSV or a folder); each partition is typed and labelled with its split once,
in threads; the profile is computed from the typed partitions with Dask's reductions; each
partition's rows are written as one file per split, in threads. The columns are typed by
:mod:`mlops.schema`, and the version's files written beside :class:`~mlops.dataset.DatasetRef`
by :mod:`mlops.dataset`.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
from mlflow.tracking import MlflowClient
from prefect import task

from prefect_mlops.infra.caching import CACHE_EXPIRATION, inputs_and_code
from prefect_mlops.mlops import source as data_source
from prefect_mlops.mlops.config import DataConfig, PipelineConfig, SplitConfig, TaskType
from prefect_mlops.mlops.dataset import (
    SPLIT_COLUMN,
    SPLITS,
    TARGET_COLUMN,
    DatasetRef,
    MetaFeatures,
    clear_incomplete,
    load_dataset_ref,
    save_dataset_ref,
    write_split_partition,
)
from prefect_mlops.mlops.errors import DataError, StorageError
from prefect_mlops.mlops.features import build_features, fit_feature_spec
from prefect_mlops.mlops.schema import (
    MAX_CLASSES,
    ColumnSchema,
    coerce_frame,
    encode_target,
    infer_schema,
    infer_task,
    is_numeric_text,
    source_types,
)
from prefect_mlops.mlops.source import SourcePartitions, read_source
from prefect_mlops.mlops.storage import ArtifactStore, open_url, store_options
from prefect_mlops.model_registry import tracking
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

PREPROCESSING_VERSION = "2"  # bump when the stored layout or cleaning rules change
# 2: a column of true/false text is numeric 0/1, as pandas reads it (it was categorical)


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


# ---------------------------------------------------------------- splitting


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


def _encode_partition(
    frame: pd.DataFrame, target: str, task: TaskType, classes: list[str] | None
) -> pd.DataFrame:
    return frame.assign(**{TARGET_COLUMN: encode_target(frame[target], task, classes)})


def _workers() -> int:
    return os.cpu_count() or 1


def type_partitions(
    source: SourcePartitions, schema: ColumnSchema, split: SplitConfig
) -> list[pd.DataFrame]:
    """Each partition of the source typed, with its split label, in threads (one per core)."""
    with ThreadPoolExecutor(_workers()) as pool:
        return list(
            pool.map(
                lambda n: _split_partition(source.partition(n), schema, split), range(len(source))
            )
        )


def in_memory(partitions: list[pd.DataFrame]) -> dd.DataFrame:
    """Frames already in memory as the partitions of a Dask frame (for Dask's reductions)."""
    parts = [dask.delayed(frame, pure=False) for frame in partitions]
    return dd.from_delayed(parts, meta=partitions[0].iloc[:0], verify_meta=False)


def write_typed_splits(
    typed: list[pd.DataFrame], target: tuple[str, TaskType, list[str] | None], uri: str
) -> dict[str, int]:
    """Write typed partitions (target encoded) as the version's split files, in threads.

    Args:
        typed: From :func:`type_partitions`; partition ``n`` is written as ``part-<n>``.
        target: The target column, the task and its classes (for :func:`encode_target`).
        uri: The dataset version's folder.

    Returns:
        Rows per split.
    """
    options = store_options(uri)

    def write(number: int) -> pd.DataFrame:
        frame = _encode_partition(typed[number], *target)
        return write_split_partition(frame, uri, options, {"number": number})

    with ThreadPoolExecutor(_workers()) as pool:
        totals = pd.concat(list(pool.map(write, range(len(typed))))).sum()
    return {s: int(totals[s]) for s in SPLITS}


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


# ---------------------------------------------------------------- the whole stage


def build_dataset_version(
    config: PipelineConfig, store: str, source_fingerprint: str
) -> DatasetRef:
    """Read, type, split, profile and write one dataset version (idempotent per content hash).

    Args:
        config: The use case.
        store: Root URL of the artifact store.
        source_fingerprint: From :func:`mlops.source.fingerprint_source`.

    Returns:
        The reference of the written (or already present) version.

    Raises:
        DataError: for any problem with the data, naming the file and the column.
    """
    version = dataset_version(source_fingerprint, config)
    uri = ArtifactStore(store).dataset_uri(config.name, version)
    existing = load_dataset_ref(uri)
    if existing is not None:
        logger.info("Dataset version %s already exists at %s: reusing it", version, uri)
        return existing
    clear_incomplete(uri)
    started = time.perf_counter()
    sample, schema, typed = read_and_type(config)
    stats = _compute(lambda: profile_source(in_memory(typed), schema), config.data.source)
    n_rows = int(stats["split_counts"].sum())
    logger.info("Typed and profiled %d rows in %.1fs", n_rows, time.perf_counter() - started)
    check_columns_usable(stats["null_counts"], n_rows, config.data.source)
    target_numeric = pd.api.types.is_numeric_dtype(sample[schema.target]) or is_numeric_text(
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
        lambda: write_typed_splits(typed, (schema.target, task, classes), uri),
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
        source_types=source_types(sample[schema.kept_columns]),
        profile=build_profile(stats, schema, n_rows),
        meta_features=compute_meta_features(stats, schema, task, classes, n_rows),
    )
    save_dataset_ref(dataset, example[spec.input_columns])
    return dataset


def read_and_type(config: PipelineConfig) -> tuple[pd.DataFrame, ColumnSchema, list[pd.DataFrame]]:
    """Read the source once; infer the schema from its first rows; type every partition.

    Returns:
        The first rows as read (the schema's sample), the schema, and the typed partitions
        with their split labels.
    """
    started = time.perf_counter()
    source = _compute(lambda: read_source(config.data), config.data.source)
    sample = source.head(5000)
    schema = infer_schema(sample, config.data, config.features)
    logger.info(
        "Read %s in %.1fs, %d partition(s): %d numeric, %d categorical, %d datetime column(s); "
        "dropped %s",
        config.data.source,
        time.perf_counter() - started,
        len(source),
        len(schema.numeric),
        len(schema.categorical),
        len(schema.datetime),
        schema.dropped or "none",
    )
    typed = _compute(lambda: type_partitions(source, schema, config.split), config.data.source)
    return sample, schema, typed


def read_head(source: dd.DataFrame, name: str, rows: int = 5000) -> pd.DataFrame:
    """The first ``rows`` rows of the source (from its first partitions), read errors as the data's."""
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
    root = open_url(destination)[1].rstrip("/")  # as fsspec names its files
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


def write_synthetic_source_if_missing(data: DataConfig) -> bool:
    """Generate a declared synthetic source if its file is not there yet.

    Returns:
        Whether a file was generated.
    """
    synthetic = data.synthetic
    if synthetic is None or "://" in data.source or Path(data.source).exists():
        return False
    from prefect_mlops.mlops.synthetic import write_dataset

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
def ensure_synthetic_source(data: DataConfig) -> bool:
    """Generate the config's synthetic source on first use (the demo's data)."""
    return write_synthetic_source_if_missing(data)


@task(name="fingerprint-source", retries=2, retry_delay_seconds=[2, 10])
def fingerprint_source(data: DataConfig) -> str:
    """Hash the source so unchanged data maps to the same dataset version."""
    return data_source.fingerprint_source(data)


@task(
    name="preprocess-dataset",
    cache_policy=inputs_and_code(
        "prefect_mlops.tasks.preprocessing",
        "prefect_mlops.mlops.features",
        "prefect_mlops.mlops.dataset",
        "prefect_mlops.mlops.schema",
        "prefect_mlops.mlops.source",
        "prefect_mlops.mlops.storage",
    ),
    cache_expiration=CACHE_EXPIRATION,
    result_serializer="json",
)
def preprocess_dataset(config: PipelineConfig, store: str, source_fingerprint: str) -> DatasetRef:
    """Type, split, profile and write the dataset version."""
    return build_dataset_version(config, store, source_fingerprint)


def log_dataset_run(
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
def log_dataset(config: PipelineConfig, dataset: DatasetRef, parent_run_id: str | None) -> str:
    """Record the dataset version in MLflow."""
    client, experiment_id = experiment_for(config)
    return log_dataset_run(client, experiment_id, dataset, parent_run_id, lineage_tags(config))
