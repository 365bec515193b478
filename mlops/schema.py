"""How raw columns are typed and used, which learning task the target calls for, and its encoding.

Pure functions on pandas frames (a sample of rows, or one partition); no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .config import DataConfig, FeatureConfig, TaskType
from .errors import DataError
from .features import BOOLEAN_WORDS, numeric_values

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
        """The columns the model sees: numeric, datetime, categorical."""
        return [*self.numeric, *self.datetime, *self.categorical]

    @property
    def kept_columns(self) -> list[str]:
        """The columns written: keys, features and the target, each once."""
        return list(dict.fromkeys([*self.key_columns, *self.feature_columns, self.target]))


def _looks_numeric(values: pd.Series) -> bool:
    present = values.dropna()
    if present.empty:
        return False
    return pd.to_numeric(present, errors="coerce").notna().mean() >= 0.99


def _looks_boolean(values: pd.Series) -> bool:
    """Text that is only true/false words: a 0/1 column, as pandas reads it from a CSV."""
    present = values.dropna().astype("string").str.strip().str.lower()
    return not present.empty and bool(present.isin(list(BOOLEAN_WORDS)).all())


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
    numbers and booleans (true/false text in any case) are numeric, ISO-like dates are
    datetimes, other text is categorical unless it
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
        elif (
            pd.api.types.is_bool_dtype(values)
            or pd.api.types.is_numeric_dtype(values)
            or _looks_boolean(values)
        ):
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


def source_types(frame: pd.DataFrame) -> dict[str, str]:
    """Each column's type in the source: ``integer``, ``float``, ``boolean``, ``datetime`` or
    ``string`` (text, categories, anything else).

    From the dtype pandas gave it, or for text (a CSV is read as text) from what it holds:
    only true/false words is ``boolean``, only whole numbers ``integer``, other numbers ``float``.
    """
    return {str(column): _source_kind(frame[column]) for column in frame.columns}


def _source_kind(values: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(values):
        return "boolean"
    if pd.api.types.is_integer_dtype(values):
        return "integer"
    if pd.api.types.is_float_dtype(values):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(values):
        return "datetime"
    if _looks_boolean(values):
        return "boolean"
    if _looks_numeric(values):
        text = values.dropna().astype("string").str.strip()
        return "integer" if bool(text.str.fullmatch(r"[+-]?\d+").all()) else "float"
    return "string"


def coerce_frame(frame: pd.DataFrame, schema: ColumnSchema) -> pd.DataFrame:
    """Type the kept columns and drop rows without a target. Returns a new frame."""
    out = frame[schema.kept_columns].copy()
    for column in schema.numeric:
        out[column] = numeric_values(out[column])  # as the model reads it: true/false are 1/0
    for column in schema.datetime:
        if not pd.api.types.is_datetime64_any_dtype(out[column]):
            out[column] = pd.to_datetime(out[column], errors="coerce", format="mixed")
    for column in [*schema.categorical, *schema.key_columns]:
        out[column] = out[column].astype("string")
    return out[out[schema.target].notna()]


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
            f"(at most {MAX_CLASSES}). If it is a quantity, set the task to regression (data.task in the config, --task with --data)."
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
    if pd.api.types.is_numeric_dtype(values) or is_numeric_text(values):
        # each distinct number labelled once (a target has a few), not once per row
        found, numbers = pd.factorize(pd.to_numeric(values, errors="coerce"))  # NaN: -1
        labels = pd.Categorical([_label(v) for v in numbers], categories=classes).codes
        return np.where(found >= 0, labels[found] if len(labels) else -1, -1).astype("float64")
    codes = pd.Categorical(values.astype("string"), categories=classes).codes
    return codes.astype("float64")


def is_numeric_text(values: pd.Series) -> bool:
    """Whether every present value of a text column parses as a number."""
    return bool(len(values)) and pd.to_numeric(values.dropna(), errors="coerce").notna().all()
