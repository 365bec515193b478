"""Delayed labels: files of ``request_id``, ``row`` (0 when absent) and ``label`` per model.

They are dropped as CSV or Parquet files under ``<artifact store>/feedback/<model>/``
(:meth:`mlops.storage.ArtifactStore.feedback_folder`); the drift monitor joins them to the
inference log. A file that cannot be read is skipped and named, never fatal.
"""

from __future__ import annotations

import logging
import time
import uuid

import pandas as pd

from prefect_mlops.mlops.storage import open_url

logger = logging.getLogger(__name__)


def load_feedback(folder: str) -> tuple[pd.DataFrame, list[str]]:
    """The delayed labels in ``folder`` (one model's), and a line per file skipped.

    Returns:
        ``request_id``, ``row`` (0 when absent) and ``label`` as text, the last label of a row
        kept; and ``<file>: <why>`` for each file that could not be read.
    """
    fs, path = open_url(folder)
    files = (
        sorted(fs.glob(f"{path}/*.csv") + fs.glob(f"{path}/*.parquet")) if fs.exists(path) else []
    )
    frames, skipped = [], []
    for file in files:
        try:
            with fs.open(file, "rb") as handle:
                frame = (
                    pd.read_csv(handle, dtype=str)
                    if file.endswith(".csv")
                    else pd.read_parquet(handle).astype("string")
                )
            missing = [c for c in ("request_id", "label") if c not in frame.columns]
            if missing:
                raise ValueError(f"columns {missing} are missing")
        except Exception as error:
            logger.warning("Skipping feedback file %s: %s", file, error)
            skipped.append(f"{file}: {error}")
            continue
        if "row" not in frame.columns:
            frame["row"] = "0"
        frames.append(frame[["request_id", "row", "label"]])
    if not frames:
        return pd.DataFrame(columns=["request_id", "row", "label"]), skipped
    labels = pd.concat(frames, ignore_index=True).dropna(subset=["request_id", "label"])
    labels["row"] = pd.to_numeric(labels["row"], errors="coerce").fillna(0).astype("int64")
    return labels.drop_duplicates(["request_id", "row"], keep="last"), skipped


def write_feedback(folder: str, labels: pd.DataFrame) -> str:
    """Drop a CSV file of delayed labels in ``folder``; returns its URL."""
    fs, path = open_url(folder)
    fs.makedirs(path, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    with fs.open(f"{path}/{name}", "w") as handle:
        labels.to_csv(handle, index=False)
    return f"{folder}/{name}"
