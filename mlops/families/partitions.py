"""A dataset split as Dask collections of model features, for the families' Dask trainers."""

from __future__ import annotations

import dask.dataframe as dd
import pandas as pd
from distributed import Client, wait

from ..dataset import TARGET_COLUMN, DatasetRef
from ..features import FeatureSpec, build_features
from ..storage import store_options


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
