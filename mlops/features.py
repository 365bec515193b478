"""Feature engineering shared by training, evaluation and serving.

A :class:`FeatureSpec` is fitted once on the training split (the categorical vocabularies) and
stored with the dataset and inside the logged model. :func:`build_features` turns raw rows into
the model's float32 matrix; the training flow, the evaluation flow, the MLflow pyfunc model and
the serving service all call it (the service through :func:`build_feature_matrix`, on the
columns of a request as it parsed them), so a row is transformed the same way everywhere.

Each raw column goes through one function per kind (:func:`numeric_values`,
:func:`datetime_values`, :func:`category_codes`). They take a pandas Series or a plain list
and give the same values for the same data; plain lists of numbers, ISO 8601 strings of one
layout and strings are converted without pandas, which is what makes a one-row request cheap.
This module imports nothing of the project but :mod:`.errors`, so a model bundle can carry it.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from .errors import DataError

ColumnValues = pd.Series | np.ndarray | Sequence[Any]
"""One raw column: a pandas Series, a numpy array or a list of Python values."""


def _units_into(stamps: np.ndarray, unit: str, inner: str) -> np.ndarray:
    """Whole ``inner`` units since the start of the enclosing ``unit`` (e.g. hours into the day)."""
    return (stamps.astype(f"datetime64[{inner}]") - stamps.astype(f"datetime64[{unit}]")).astype(
        "int64"
    )


def _dayofweek(stamps: np.ndarray) -> np.ndarray:
    """Monday 0 to Sunday 6 (1970-01-01 was a Thursday)."""
    return (stamps.astype("datetime64[D]").astype("int64") + 3) % 7


_DATETIME_PARTS = {
    "year": lambda d: d.astype("datetime64[Y]").astype("int64") + 1970,
    "month": lambda d: d.astype("datetime64[M]").astype("int64") % 12 + 1,
    "day": lambda d: _units_into(d, "M", "D") + 1,
    "dayofweek": _dayofweek,
    "dayofyear": lambda d: _units_into(d, "Y", "D") + 1,
    "hour": lambda d: _units_into(d, "D", "h"),
    "minute": lambda d: _units_into(d, "h", "m"),
    "is_weekend": lambda d: _dayofweek(d) >= 5,
}
"""Calendar parts of naive UTC ``datetime64[us]`` stamps, as pandas' ``.dt`` accessors give them."""


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
        """Feature names a model treats as categorical (integer codes, NaN when unseen)."""
        return list(self.categorical)

    @cached_property
    def category_lookups(self) -> dict[str, dict[str, float]]:
        """Per categorical column, value -> code (built once per spec)."""
        return {
            column: {value: float(code) for code, value in enumerate(vocabulary)}
            for column, vocabulary in self.categorical.items()
        }

    @cached_property
    def numbered_categories(self) -> list[str]:
        """Categorical columns whose values are all numbers (``data.categorical`` naming a
        column of codes): a reader such as pandas hands them over as numbers, read as text."""
        return [
            column
            for column, vocabulary in self.categorical.items()
            if vocabulary and pd.to_numeric(pd.Series(vocabulary), errors="coerce").notna().all()
        ]

    @cached_property
    def category_indexes(self) -> dict[str, pd.Index]:
        """Per categorical column, the vocabulary as a pandas index (for Series lookups)."""
        return {
            column: pd.Index(vocabulary, dtype="string")
            for column, vocabulary in self.categorical.items()
        }


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
    (including missing ones) become NaN, which the model families treat as missing.

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
    columns = {column: raw[column] for column in spec.input_columns}
    matrix = build_feature_matrix(columns, len(raw), spec)
    return pd.DataFrame(matrix, columns=spec.feature_names, index=raw.index)


def build_feature_matrix(
    columns: Mapping[str, ColumnValues], n_rows: int, spec: FeatureSpec
) -> np.ndarray:
    """The model's float32 matrix from raw columns (what :func:`build_features` computes).

    Args:
        columns: Each of ``spec.input_columns`` -> its ``n_rows`` raw values.
        n_rows: The number of rows.
        spec: The fitted transform.

    Returns:
        A ``(n_rows, len(spec.feature_names))`` float32 array.
    """
    matrix = np.empty((n_rows, len(spec.feature_names)), dtype="float32")
    with np.errstate(over="ignore"):  # beyond float32's range is +-inf, as a model would see it
        _fill_matrix(matrix, columns, spec)
    return matrix


def _fill_matrix(
    matrix: np.ndarray, columns: Mapping[str, ColumnValues], spec: FeatureSpec
) -> None:
    position = 0
    for column in spec.numeric:
        values = numeric_values(columns[column])
        if column in spec.log_transform:
            values = np.sign(values) * np.log1p(np.abs(values))
        matrix[:, position] = values
        position += 1
    for column in spec.datetime:
        stamps = datetime_values(columns[column])
        missing = np.isnat(stamps)
        for part in spec.datetime_parts:
            matrix[:, position] = np.where(missing, np.nan, _DATETIME_PARTS[part](stamps))
            position += 1
    for column in spec.categorical:
        matrix[:, position] = category_codes(columns[column], spec, column)
        position += 1


_PLAIN_NUMBER = frozenset({int, float, type(None)})
_TEXT_OR_NONE = frozenset({str, type(None)})


BOOLEAN_WORDS = {"true": 1.0, "false": 0.0}
"""Text read as a boolean, in any case (as pandas reads a CSV): a boolean column is numeric 0/1."""


def numeric_values(values: ColumnValues) -> np.ndarray:
    """Float64 numbers (booleans and the words true/false as 1/0); missing values and other
    text become NaN."""
    if isinstance(values, list) and _PLAIN_NUMBER.issuperset(map(type, values)):
        return np.array(values, dtype="float64")  # None -> NaN
    series = values if isinstance(values, pd.Series) else pd.Series(values)
    if pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    numbers = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    unread = np.isnan(numbers)
    if unread.any():
        words = series[unread].astype("string").str.strip().str.lower().map(BOOLEAN_WORDS)
        numbers = numbers.copy()  # pandas may hand out a read-only view
        numbers[unread] = words.to_numpy(dtype="float64", na_value=np.nan)
    return numbers


def datetime_values(values: ColumnValues) -> np.ndarray:
    """Naive UTC ``datetime64[us]`` stamps; what cannot be read as a date becomes NaT.

    Text is read as ``pd.to_datetime(..., errors="coerce", utc=True)`` reads it (the layout
    is inferred from the first value; values of another layout become NaT). ISO 8601 text of
    one layout is read without pandas, to the same result.
    """
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.DatetimeTZDtype):
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        if pd.api.types.is_datetime64_any_dtype(values):
            return values.to_numpy(dtype="datetime64[us]")
        if values.dtype == object or pd.api.types.is_string_dtype(values):
            values = values.tolist()
    if isinstance(values, list):
        stamps = _iso_stamps(values)
        if stamps is not None:
            return stamps
    with warnings.catch_warnings():  # "could not infer format": the values become NaT, as meant
        warnings.simplefilter("ignore", UserWarning)
        parsed = pd.to_datetime(pd.Series(values), errors="coerce", utc=True)
    return parsed.dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


def _layouts() -> dict[str, int]:
    """ISO 8601 layouts (digits as ``d``) that pandas and ``datetime.fromisoformat`` read alike,
    each with the length of its zone suffix (``Z`` or ``+hh:mm``)."""
    times = ["dd:dd", "dd:dd:dd", *(f"dd:dd:dd.{'d' * n}" for n in range(1, 7))]
    zones = {"": 0, "Z": 1, "+dd:dd": 6, "-dd:dd": 6}
    layouts = {"dddd-dd-dd": 0}
    for separator in "T ":
        for time in times:
            for zone, length in zones.items():
                layouts[f"dddd-dd-dd{separator}{time}{zone}"] = length
    return layouts


_ISO_LAYOUTS = _layouts()
_AS_LAYOUT = str.maketrans("0123456789", "dddddddddd")


def _iso_stamps(items: list[Any]) -> np.ndarray | None:
    """Stamps for ISO 8601 strings of one layout (and missing values); None for anything else.

    The strings are checked and parsed by numpy as a whole; a column with an impossible date
    in it (February 30) is read value by value, that value becoming NaT as in pandas.
    """
    if set(map(type, items)) == {str}:
        missing, present = np.zeros(len(items), dtype=bool), items
    else:
        missing = np.array([is_missing(v) for v in items], dtype=bool)
        present = [v for v, gone in zip(items, missing, strict=True) if not gone]
        if not present or not all(type(v) is str for v in present):
            return None
    found = _layout_grid(present)
    if found is None:
        return None
    grid, zone = found
    width = grid.shape[1]
    local = np.ascontiguousarray(grid[:, : width - zone]).view(f"<U{width - zone}").ravel()
    try:
        parsed = local.astype("datetime64[us]")
    except ValueError:  # an impossible date somewhere: read each value on its own
        parsed = np.array([_iso_stamp(v) for v in present], dtype="datetime64[us]")
        zone = 0  # _iso_stamp already converted to UTC
    if zone == 6:
        digits = grid[:, width - 5 :].astype("int64") - ord("0")
        minutes = (digits[:, 0] * 10 + digits[:, 1]) * 60 + digits[:, 3] * 10 + digits[:, 4]
        sign = np.where(grid[:, width - 6] == ord("-"), -1, 1)
        parsed = parsed - (sign * minutes).astype("timedelta64[m]")
    stamps = np.full(len(items), np.datetime64("NaT"), dtype="datetime64[us]")
    stamps[~missing] = parsed
    return stamps


def _layout_grid(texts: list[str]) -> tuple[np.ndarray, int] | None:
    """The strings as a (rows, characters) code grid, and the length of their zone suffix, if
    they share one ISO 8601 layout."""
    layout = texts[0].translate(_AS_LAYOUT)
    if layout not in _ISO_LAYOUTS:
        return None
    array = np.array(texts)
    if array.dtype.itemsize != 4 * len(layout):  # a longer value than the first
        return None
    grid = array.view(np.uint32).reshape(len(texts), len(layout))
    is_digit = np.array([c == "d" for c in layout])
    template = np.array([ord(c) for c in texts[0]], dtype=np.uint32)
    digits = grid[:, is_digit]
    same = ((digits >= ord("0")) & (digits <= ord("9"))).all() and (
        grid[:, ~is_digit] == template[~is_digit]
    ).all()
    return (grid, _ISO_LAYOUTS[layout]) if same else None


def is_missing(value: Any) -> bool:
    """True for None, NaN, pd.NA and NaT: what pandas counts as missing in a column."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float | np.floating) and value != value


def _iso_stamp(value: str) -> datetime | None:
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:  # an impossible date, such as February 30
        return None
    return stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp


def category_codes(values: ColumnValues, spec: FeatureSpec, column: str) -> np.ndarray:
    """Vocabulary positions of a categorical column as float64; unseen or missing -> NaN."""
    if isinstance(values, list) and _TEXT_OR_NONE.issuperset(map(type, values)):
        codes = map(spec.category_lookups[column].get, values)
        return np.array(list(codes), dtype="float64")  # unseen or None -> None -> NaN
    series = values if isinstance(values, pd.Series) else pd.Series(values, dtype=object)
    codes = spec.category_indexes[column].get_indexer(series.astype("string"))
    return np.where(codes < 0, np.nan, codes)
