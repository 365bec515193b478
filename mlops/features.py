"""Feature engineering shared by training, evaluation and serving.

A :class:`FeatureSpec` is fitted once on the training split (the categorical vocabularies) and
stored with the dataset and inside the logged model. :func:`build_features` turns raw rows into
the model's float32 matrix; the training flow, the evaluation flow and the MLflow pyfunc model
all call this one function, so a row is transformed the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from mlops.errors import DataError

_DATETIME_PARTS = {
    "year": lambda s: s.dt.year,
    "month": lambda s: s.dt.month,
    "day": lambda s: s.dt.day,
    "dayofweek": lambda s: s.dt.dayofweek,
    "dayofyear": lambda s: s.dt.dayofyear,
    "hour": lambda s: s.dt.hour,
    "minute": lambda s: s.dt.minute,
    "is_weekend": lambda s: (s.dt.dayofweek >= 5).where(s.notna()),
}


class FeatureSpec(BaseModel):
    """A fitted feature transform: which raw columns become which model features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    numeric: list[str]
    log_transform: list[str]
    datetime: list[str]
    datetime_parts: list[str]
    categorical: dict[str, list[str]]

    @property
    def input_columns(self) -> list[str]:
        """Raw columns the transform reads."""
        return [*self.numeric, *self.datetime, *self.categorical]

    @property
    def feature_names(self) -> list[str]:
        """Model feature names, in matrix column order."""
        names = [f"log_{c}" if c in self.log_transform else c for c in self.numeric]
        names += [f"{c}_{part}" for c in self.datetime for part in self.datetime_parts]
        return names + list(self.categorical)

    @property
    def categorical_features(self) -> list[str]:
        """Feature names LightGBM treats as categorical (integer codes, NaN when unseen)."""
        return list(self.categorical)


def fit_feature_spec(
    numeric: Iterable[str],
    datetime: Iterable[str],
    category_counts: Mapping[str, Mapping[str, int]],
    log_transform: Iterable[str],
    datetime_parts: Iterable[str],
    max_categories: int,
) -> FeatureSpec:
    """Fit the transform from training-split category frequencies.

    Args:
        numeric: Numeric raw columns.
        datetime: Datetime raw columns, expanded into ``datetime_parts``.
        category_counts: For each categorical column, value -> count on the training split.
        log_transform: Numeric columns replaced by ``sign(x) * log1p(|x|)``.
        datetime_parts: Parts extracted from each datetime column.
        max_categories: Most frequent values kept per column; the rest become missing.

    Returns:
        The fitted spec. Vocabularies are ordered by frequency, then value, so refitting on
        the same data gives the same codes.

    Raises:
        DataError: if a log-transformed column is not numeric.
    """
    numeric = list(numeric)
    unknown = sorted(set(log_transform) - set(numeric))
    if unknown:
        raise DataError(
            f"features.log_transform names {unknown}, which are not numeric columns of the data "
            f"(numeric columns: {numeric}). Remove them from features.log_transform."
        )
    vocabularies = {
        column: [
            value
            for value, _ in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))[
                :max_categories
            ]
        ]
        for column, counts in category_counts.items()
    }
    return FeatureSpec(
        numeric=numeric,
        log_transform=[c for c in numeric if c in set(log_transform)],
        datetime=list(datetime),
        datetime_parts=list(datetime_parts),
        categorical=vocabularies,
    )


def missing_input_columns(columns: Iterable[str], spec: FeatureSpec) -> list[str]:
    """Raw columns the spec needs that ``columns`` lacks."""
    present = set(columns)
    return [c for c in spec.input_columns if c not in present]


def build_features(raw: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """Turn raw rows into the model's feature matrix.

    Unparseable numbers and dates become NaN; category values outside the vocabulary
    (including missing ones) become NaN, which LightGBM treats as missing.

    Args:
        raw: Raw rows with at least ``spec.input_columns``; other columns are ignored.
        spec: The fitted transform.

    Returns:
        A new float32 frame with columns ``spec.feature_names``, on the same index.

    Raises:
        DataError: naming the raw columns that are missing.
    """
    missing = missing_input_columns(raw.columns, spec)
    if missing:
        raise DataError(
            f"Input is missing columns {missing}; the model needs {spec.input_columns}."
        )
    names = spec.feature_names
    position = {name: i for i, name in enumerate(names)}
    matrix = np.empty((len(raw), len(names)), dtype="float32")
    for column in spec.numeric:
        values = pd.to_numeric(raw[column], errors="coerce").to_numpy(
            dtype="float64", na_value=np.nan
        )
        if column in spec.log_transform:
            matrix[:, position[f"log_{column}"]] = np.sign(values) * np.log1p(np.abs(values))
        else:
            matrix[:, position[column]] = values
    for column in spec.datetime:
        stamps = _as_datetime(raw[column])
        for part in spec.datetime_parts:
            matrix[:, position[f"{column}_{part}"]] = (
                _DATETIME_PARTS[part](stamps).astype("float64").to_numpy(na_value=np.nan)
            )
    for column, vocabulary in spec.categorical.items():
        codes = _vocabulary_index(vocabulary).get_indexer(raw[column].astype("string"))
        matrix[:, position[column]] = np.where(codes < 0, np.nan, codes)
    return pd.DataFrame(matrix, columns=names, index=raw.index)


_VOCABULARIES: dict[int, tuple[list[str], pd.Index]] = {}


def _vocabulary_index(vocabulary: list[str]) -> pd.Index:
    """A lookup index per vocabulary list, built once (serving calls this for every request)."""
    cached = _VOCABULARIES.get(id(vocabulary))
    if cached is None or cached[0] is not vocabulary:  # a reused id belongs to another list
        cached = (vocabulary, pd.Index(vocabulary, dtype="string"))
        _VOCABULARIES[id(vocabulary)] = cached
    return cached[1]


def _as_datetime(values: pd.Series) -> pd.Series:
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_any_dtype(values):
        return values
    return pd.to_datetime(values, errors="coerce", utc=True).dt.tz_localize(None)
