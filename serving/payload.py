"""Request bodies of MLflow's scoring protocol, turned into checked frames of raw rows.

Accepted, as ``mlflow models serve`` accepts them: JSON with one of ``dataframe_split``,
``dataframe_records``, ``instances`` or ``inputs``, and ``text/csv``. Anything else, and
any body whose columns or values do not fit the model, is a :class:`PayloadError` with a 4xx
status and a message that names what is wrong.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
import pandas as pd

from mlops.features import FeatureSpec

JSON_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class PayloadError(Exception):
    """A request the service refuses: ``status`` is the HTTP status (4xx)."""

    def __init__(self, status: int, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def parse_body(body: bytes, content_type: str) -> pd.DataFrame:
    """Raw rows from a request body.

    Raises:
        PayloadError: 415 for another content type, 400 for a malformed or empty body.
    """
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "text/csv":
        return _csv_frame(body)
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
    return _json_frame(document)


def _csv_frame(body: bytes) -> pd.DataFrame:
    if not body.strip():
        raise PayloadError(400, "The CSV body is empty; send a header row and at least one row.")
    try:
        return pd.read_csv(io.BytesIO(body))
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise PayloadError(400, f"The CSV body could not be parsed: {error}.") from None


def _json_frame(document: Any) -> pd.DataFrame:
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
    try:
        if key == "dataframe_split":
            if not isinstance(value, dict) or "columns" not in value or "data" not in value:
                raise PayloadError(400, "dataframe_split needs 'columns' and 'data'.")
            return pd.DataFrame(value["data"], columns=value["columns"])
        if isinstance(value, dict):  # inputs/instances as {column: [values]}
            return pd.DataFrame(value)
        if isinstance(value, list) and all(isinstance(row, dict) for row in value):
            return pd.DataFrame.from_records(value)
    except (ValueError, TypeError) as error:
        raise PayloadError(400, f"'{key}' does not describe a table: {error}.") from None
    raise PayloadError(
        400, f"'{key}' must be a list of row objects or an object of columns for this model."
    )


def check_frame(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    """The rows, checked against the model's input columns and types.

    Raises:
        PayloadError: 400 naming missing or unexpected columns, or values of the wrong type.
    """
    if frame.empty:
        raise PayloadError(400, "The request has no rows to score.")
    expected = spec.input_columns
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in frame.columns if c not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing column(s) {missing}")
        if extra:
            parts.append(f"unexpected column(s) {[str(c) for c in extra]}")
        raise PayloadError(400, f"{'; '.join(parts)}. The model takes {expected}.")
    for column in spec.numeric:
        _check_numeric(frame[column], column)
    for column in spec.datetime:
        _check_datetime(frame[column], column)
    return frame


def _check_numeric(values: pd.Series, column: str) -> None:
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        return
    converted = pd.to_numeric(values, errors="coerce")
    bad = converted.isna() & values.notna() | values.map(lambda v: isinstance(v, bool))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise PayloadError(
            400, f"Column '{column}' must be numeric; row {row} has {values.iloc[row]!r}."
        )


def _check_datetime(values: pd.Series, column: str) -> None:
    present = values.dropna()
    if present.empty:
        return
    parsed = pd.to_datetime(present.astype(str), errors="coerce", format="mixed")
    if parsed.isna().any():
        position = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise PayloadError(
            400,
            f"Column '{column}' must hold dates; row {present.index[position]} has "
            f"{present.iloc[position]!r}.",
        )


def predictions_body(predictions: pd.DataFrame) -> bytes:
    """``{"predictions": [...]}`` as ``mlflow models serve`` answers for a frame."""
    records = predictions.to_dict(orient="records")
    return orjson.dumps({"predictions": records}, option=orjson.OPT_SERIALIZE_NUMPY)
