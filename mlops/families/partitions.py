"""A dataset split as model features for the families' Dask trainers: as Dask collections spread
over the workers, or read whole into one worker's memory."""

from __future__ import annotations

from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from distributed import Client, wait

from ..dataset import TARGET_COLUMN, DatasetRef
from ..features import FeatureSpec, build_feature_matrix, build_features
from ..storage import open_url, store_options


def _features_and_label(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    return build_features(frame, spec).assign(**{TARGET_COLUMN: frame[TARGET_COLUMN].to_numpy()})


def feature_frame(dataset: DatasetRef, split: str, min_partitions: int) -> dd.DataFrame:
    """A split's features (float32, categorical codes) and its label column
    (:data:`~mlops.dataset.TARGET_COLUMN`), in at least ``min_partitions`` partitions (every
    worker needs a share, or it sits idle)."""
    uri = dataset.split_uris[split]
    frame = dd.read_parquet(uri, storage_options=store_options(uri) or None)
    if frame.npartitions < min_partitions:
        frame = frame.repartition(npartitions=min_partitions)
    spec = dataset.feature_spec
    meta = pd.DataFrame({name: pd.Series(dtype="float32") for name in spec.feature_names})
    meta[TARGET_COLUMN] = pd.Series(dtype="float64")
    return frame.map_partitions(_features_and_label, spec, meta=meta)


def feature_partitions(
    dataset: DatasetRef, split: str, min_partitions: int
) -> tuple[dd.DataFrame, dd.Series]:
    """Features and labels of a split as Dask collections with identical partitions.

    Both come out of one ``map_partitions`` call (:func:`feature_frame`), so Dask cannot plan
    the label column's read differently (it merges small files when it reads fewer columns)
    and misalign the two.
    """
    combined = feature_frame(dataset, split, min_partitions)
    return combined[dataset.feature_spec.feature_names], combined[TARGET_COLUMN]


def spread_partitions(client: Client, frame: dd.DataFrame, workers: list[str]) -> dd.DataFrame:
    """``frame`` computed into worker memory, its partitions dealt to ``workers`` in turn.

    A trainer that trains where the data is (``xgboost.dask``) then uses every one of them;
    left to the scheduler, a small split's partitions can all land on one worker.
    """
    futures = [
        client.compute(part, workers=[workers[i % len(workers)]])
        for i, part in enumerate(frame.to_delayed())
    ]
    wait(futures)
    return dd.from_delayed(futures, meta=frame._meta, verify_meta=False)


def read_feature_matrix(
    uri: str, spec: FeatureSpec, options: dict[str, Any] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A split's features as one float32 matrix and its labels, read part by part.

    The rows come in the order of the split's files (as :func:`~mlops.dataset.read_split` and
    :func:`feature_frame` read them); each file's raw columns go straight into their rows of
    the matrix, so no frame of the whole split is ever held.

    Args:
        uri: The split's folder (``DatasetRef.split_uris[split]``).
        spec: The fitted feature transform.
        options: Storage options (resolved by the caller, so a worker need not read settings).

    Returns:
        The ``(rows, features)`` float32 matrix and the float64 label column.
    """
    fs, path = open_url(uri, options or {})
    parts = sorted(fs.glob(f"{path}/*.parquet"))
    counts = []
    for part in parts:
        with fs.open(part, "rb") as handle:
            counts.append(pq.ParquetFile(handle).metadata.num_rows)
    matrix = np.empty((sum(counts), len(spec.feature_names)), dtype="float32")
    labels = np.empty(sum(counts), dtype="float64")
    start = 0
    for part, rows in zip(parts, counts, strict=True):
        with fs.open(part, "rb") as handle:
            table = pq.read_table(handle, columns=[*spec.input_columns, TARGET_COLUMN])
        columns = {name: table.column(name).to_pandas() for name in spec.input_columns}
        matrix[start : start + rows] = build_feature_matrix(columns, rows, spec)
        labels[start : start + rows] = table.column(TARGET_COLUMN).to_numpy()
        start += rows
    return matrix, labels
