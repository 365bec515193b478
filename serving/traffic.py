"""Simulated serving traffic for the demo: held-out rows, optionally drifted, with their outcomes.

``mlops simulate-traffic`` samples rows, sends them to a serving instance and writes their
outcomes as delayed labels (the feedback files the drift monitor joins on request id).

Rows are drawn (with replacement) from the champion's test split, so undrifted traffic looks
like the data the model was trained on. ``drift_rows`` shifts every numeric input by one
standard deviation of the reference and moves half the rows of every categorical input to its
rarest value; outcomes stay as they were, so delayed labels show what drift does to the model.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np
import orjson
import pandas as pd

from prefect_mlops.mlops.features import FeatureSpec
from prefect_mlops.serving.client import split_payload


@dataclass
class TrafficResult:
    """What was sent: request ids (with the labels of their rows), answers and timing."""

    request_ids: list[str] = field(default_factory=list)
    labels: list[list[str]] = field(default_factory=list)
    ok: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def sample_rows(
    test: pd.DataFrame, spec: FeatureSpec, target: str, count: int, seed: int
) -> tuple[pd.DataFrame, pd.Series]:
    """``count`` rows of the model's input columns, and their outcomes as text."""
    picked = test.sample(count, replace=len(test) < count, random_state=seed)
    labels = picked[target].astype(str) if target in picked else pd.Series([""] * count)
    return picked[spec.input_columns].reset_index(drop=True), labels.reset_index(drop=True)


def drift_rows(rows: pd.DataFrame, spec: FeatureSpec, seed: int) -> pd.DataFrame:
    """The rows with every numeric input shifted by one standard deviation and categories skewed."""
    rng = np.random.default_rng(seed)
    shifted = {}
    for column in spec.numeric:
        values = pd.to_numeric(rows[column], errors="coerce")
        shifted[column] = values + float(values.std() or 1.0)
    for column in spec.categorical:
        known = spec.categorical[column]
        if not known:
            continue
        counts = rows[column].value_counts()
        rarest = min(known, key=lambda value: counts.get(value, 0))
        moved = rng.random(len(rows)) < 0.5
        shifted[column] = rows[column].where(~moved, rarest)
    return rows.assign(**shifted)


def send_traffic(
    url: str,
    rows: pd.DataFrame,
    labels: pd.Series,
    batch_rows: int = 1,
    progress: Callable[[int], None] | None = None,
) -> TrafficResult:
    """POST the rows to ``url``/invocations, ``batch_rows`` per request, each with a request id."""
    result = TrafficResult()
    started = time.perf_counter()
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(rows), batch_rows):
            chunk = rows.iloc[start : start + batch_rows]
            ident = uuid.uuid4().hex
            reply = client.post(
                f"{url.rstrip('/')}/invocations",
                content=orjson.dumps({"dataframe_split": split_payload(chunk)}),
                headers={"Content-Type": "application/json", "X-Request-Id": ident},
            )
            if reply.status_code == 200:
                result.ok += 1
                result.request_ids.append(ident)
                result.labels.append(labels.iloc[start : start + batch_rows].tolist())
                version = reply.headers.get("X-Model-Version", "")
                result.versions[version] = result.versions.get(version, 0) + 1
            else:
                result.errors[reply.status_code] = result.errors.get(reply.status_code, 0) + 1
            if progress is not None:
                progress(start + len(chunk))
    result.seconds = time.perf_counter() - started
    return result


def feedback_frame(result: TrafficResult) -> pd.DataFrame:
    """Delayed labels of the sent rows: ``request_id``, ``row``, ``label``."""
    records = [
        {"request_id": ident, "row": row, "label": label}
        for ident, labels in zip(result.request_ids, result.labels, strict=True)
        for row, label in enumerate(labels)
    ]
    return pd.DataFrame(records, columns=["request_id", "row", "label"])
