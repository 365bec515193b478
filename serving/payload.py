"""Request bodies of MLflow's scoring protocol, turned into checked raw columns.

Accepted, as ``mlflow models serve`` accepts them: JSON with one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``, and ``text/csv``. A JSON body becomes plain
lists of column values, which the shared feature code (:mod:`mlops.features`) reads without
building a pandas frame; CSV is read by pandas, as MLflow reads it. Anything else, and any body
whose columns or values do not fit the model, is a :class:`PayloadError` with a 4xx status and
a message that names what is wrong.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pandas as pd

from prefect_mlops.mlops.features import (
    ColumnValues,
    FeatureSpec,
    is_missing,
    missing_input_columns,
)

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_NUMBER = frozenset({int, float, bool, type(None)})
_TEXT = frozenset({str, type(None)})
_CODE = frozenset({str, int, float, type(None)})
"""The JSON types a column accepts, as a client sends a file's rows read by pandas: numbers and
booleans (1/0) in a numeric column, text in a date or categorical column, numbers or text in
a categorical column of numeric codes; null is a missing value everywhere."""


class PayloadError(Exception):
    """A request the service refuses: ``status`` is the HTTP status (4xx)."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class Rows:
    """A request's rows as raw columns: column name -> its values (a list, or a Series for CSV)."""

    columns: dict[str, ColumnValues]
    count: int


def parse_body(body: bytes, content_type: str) -> Rows:
    """Raw rows from a request body.

    Raises:
        PayloadError: 415 for another content type, 400 for a malformed or empty body.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "text/csv":
        return _csv_rows(body)
    if kind != "application/json":
        raise PayloadError(
            415,
            f"Content type '{kind or '(none)'}' is not supported; send application/json "
            "(dataframe_split, dataframe_records, instances or inputs) or text/csv.",
            "UNSUPPORTED_MEDIA_TYPE",
        )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise PayloadError(400, f"The body is not valid JSON: {error}.") from None
    return _json_rows(document)


def _csv_rows(body: bytes) -> Rows:
    if not body.strip():
        raise PayloadError(400, "The CSV body is empty; send a header row and at least one row.")
    try:
        frame = pd.read_csv(io.BytesIO(body))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise PayloadError(400, f"The CSV body could not be parsed: {error}.") from None
    if frame.columns.duplicated().any():
        raise PayloadError(400, "The CSV header names a column twice.")
    return Rows({str(c): frame[c] for c in frame.columns}, len(frame))


def _json_rows(document: Any) -> Rows:
    if not isinstance(document, dict):
        raise PayloadError(400, f"The JSON body must be an object with one of {list(JSON_KEYS)}.")
    keys = [k for k in JSON_KEYS if k in document]
    unknown = sorted(set(document) - set(JSON_KEYS) - {"params"})
    if len(keys) != 1 or unknown:
        raise PayloadError(
            400,
            f"The JSON body must have exactly one of {list(JSON_KEYS)}"
            + (f"; unknown key(s) {unknown}" if unknown else f"; got {sorted(document)}")
            + ".",
        )
    key = keys[0]
    value = document[key]
    if key == "dataframe_split":
        return _split_rows(value)
    if isinstance(value, dict):  # inputs/instances as {column: [values]}
        return _column_rows(key, value)
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return _record_rows(value)
    raise PayloadError(
        400, f"'{key}' must be a list of row objects or an object of columns for this model."
    )


def _split_rows(value: Any) -> Rows:
    if not isinstance(value, dict) or "columns" not in value or "data" not in value:
        raise PayloadError(400, "dataframe_split needs 'columns' and 'data'.")
    columns, data = value["columns"], value["data"]
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise PayloadError(400, "dataframe_split 'columns' must be a list of column names.")
    if len(set(columns)) != len(columns):
        raise PayloadError(400, "dataframe_split 'columns' names a column twice.")
    if not isinstance(data, list):
        raise PayloadError(400, "dataframe_split 'data' must be a list of rows.")
    width = len(columns)
    if not (set(map(type, data)) <= {list} and set(map(len, data)) <= {width}):
        number, row = next(
            (i, r) for i, r in enumerate(data) if not isinstance(r, list) or len(r) != width
        )
        raise PayloadError(
            400,
            f"dataframe_split row {number} must be a list of {width} values, one per column; "
            f"it is {_describe(row)}.",
        )
    values = zip(*data, strict=True) if data else ([] for _ in columns)
    return Rows({c: list(v) for c, v in zip(columns, values, strict=True)}, len(data))


def _record_rows(records: list[dict]) -> Rows:
    names = list(dict.fromkeys(name for record in records for name in record))
    return Rows({n: [record.get(n) for record in records] for n in names}, len(records))


def _column_rows(key: str, value: dict) -> Rows:
    lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
    if -1 in lengths or len(lengths) > 1:
        raise PayloadError(
            400, f"'{key}' as an object must map each column to a list of values, all as long."
        )
    return Rows({str(c): v for c, v in value.items()}, lengths.pop() if lengths else 0)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"{type(value).__name__} {value!r}"[:80]


def check_rows(rows: Rows, spec: FeatureSpec) -> None:
    """The columns of a request against the model's inputs, before any feature is computed.

    In JSON, a numeric column takes numbers and booleans, a date or categorical column takes
    text, a categorical column of numeric codes takes numbers too (null is a missing value in
    all), so that the rows of the file the model was trained from, read by pandas, are scored.

    Raises:
        PayloadError: 400 for no rows, missing or unexpected columns, or a value of another
            JSON type than its column takes (a number in a text column).
    """
    if rows.count == 0:
        raise PayloadError(400, "The request has no rows to score.")
    expected = spec.input_columns
    missing = missing_input_columns(rows.columns, spec)
    extra = [c for c in rows.columns if c not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {extra}")
        raise PayloadError(400, f"{'; '.join(parts)}. The model takes {expected}.")
    numeric, codes = set(spec.numeric), set(spec.numbered_categories)
    for column, values in rows.columns.items():
        if isinstance(values, pd.Series):  # CSV: pandas read the text; check_values judges it
            continue
        allowed = _NUMBER if column in numeric else _CODE if column in codes else _TEXT
        if set(map(type, values)) <= allowed:
            continue
        row, value = next((i, v) for i, v in enumerate(values) if type(v) not in allowed)
        _refuse(column, row, value, "must be numeric" if column in numeric else "must hold text")


def check_values(rows: Rows, features: np.ndarray, spec: FeatureSpec) -> None:
    """Refuse values the feature code could not read: text in a numeric column, a non-date.

    A value read as missing although it was given shows as NaN in the model's matrix.

    Raises:
        PayloadError: 400 naming the first such column, row and value.
    """
    position = {name: i for i, name in enumerate(spec.feature_names)}
    checked = {c: position[f"log_{c}" if c in spec.log_transform else c] for c in spec.numeric}
    if spec.datetime_parts:
        checked |= {c: position[f"{c}_{spec.datetime_parts[0]}"] for c in spec.datetime}
    for column, index in checked.items():
        unread = np.isnan(features[:, index])
        if not unread.any():
            continue
        values = rows.columns[column]
        for row in np.flatnonzero(unread).tolist():
            value = values.iloc[row] if isinstance(values, pd.Series) else values[row]
            if not is_missing(value):
                what = "must be numeric" if column in spec.numeric else _DATE_RULE
                _refuse(column, row, value, what)


_DATE_RULE = "must hold dates, all in one layout (ISO 8601 such as 2025-10-24T04:46:47 is safest)"


def _refuse(column: str, row: int, value: Any, rule: str) -> None:
    raise PayloadError(400, f"Column '{column}' {rule}; row {row} has {value!r}.")


def predictions_body(predictions: dict[str, np.ndarray]) -> bytes:
    """``{"predictions": [...]}``: one object per row, as ``mlflow models serve`` answers."""
    names = list(predictions)
    rows = zip(*(column.tolist() for column in predictions.values()), strict=True)
    return orjson.dumps({"predictions": [dict(zip(names, row, strict=True)) for row in rows]})
