"""Reading the inference log back: the requests logged in a time window, as scored rows.

The log keeps each request as the service received it (:mod:`serving.log_sinks`);
:func:`expand_requests` parses the bodies with the service's own parser into one row per scored
row: ``META_COLUMNS``, ``input.<column>`` and ``output.<column>``. A Parquet file that cannot be
read is skipped and named, never fatal.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
from dataclasses import dataclass

import numpy as np
import orjson
import pandas as pd
import pyarrow.parquet as pq

from prefect_mlops.mlops.config import MonitoringConfig
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.mlops.storage import artifact_store, open_url

from .log_sinks import (
    DATE_PREFIX,
    OUTPUT_PREFIX,
    REQUEST_COLUMNS,
    TABLE_NAME,
    inference_log_table,
    model_folder,
)
from .payload import PayloadError, parse_body

logger = logging.getLogger(__name__)

INPUT_PREFIX = "input."
META_COLUMNS = ("request_id", "row", "logged_at", "model", "version")
"""The columns of an expanded log, one row per scored row, before ``input.*`` and ``output.*``."""


def expand_requests(requests: pd.DataFrame) -> pd.DataFrame:
    """Logged requests (one row each) as scored rows: ``META_COLUMNS``, ``input.*``, ``output.*``.

    Bodies are parsed by the service's own parser, so every format it accepts reads back.

    Raises:
        ValueError: a body that does not parse, or outputs that do not match its rows.
    """
    inputs: dict[str, list] = {}
    counts = requests["rows"].astype("int64").to_numpy()
    offset = 0
    for body, content_type, count in zip(
        requests["body"], requests["content_type"], counts, strict=True
    ):
        try:
            parsed = parse_body(bytes(body), content_type)
        except PayloadError as error:
            raise ValueError(f"a logged body does not parse: {error}") from None
        if parsed.count != count:
            raise ValueError(f"a logged body has {parsed.count} rows, the log says {count}")
        for name in inputs.keys() - parsed.columns.keys():
            inputs[name].extend([None] * count)
        for name, values in parsed.columns.items():
            column = inputs.setdefault(name, [None] * offset)
            column.extend(values.tolist() if isinstance(values, pd.Series) else values)
        offset += count
    frame = pd.DataFrame(
        {
            "request_id": np.repeat(requests["request_id"].to_numpy(), counts),
            "row": np.concatenate([np.arange(c) for c in counts]) if len(counts) else [],
            "logged_at": np.repeat(requests["logged_at"].to_numpy(), counts),
            "model": np.repeat(requests["model"].to_numpy(), counts),
            "version": np.repeat(requests["version"].astype(str).to_numpy(), counts),
        }
    )
    for name, values in inputs.items():
        frame[INPUT_PREFIX + name] = values
    for name in [c for c in requests.columns if c.startswith(OUTPUT_PREFIX)]:
        values = list(itertools.chain.from_iterable(requests[name]))
        if len(values) != offset:
            raise ValueError(f"{name} has {len(values)} values for {offset} rows")
        frame[name] = values
    return frame


@dataclass
class InferenceWindow:
    """The logged rows of the window (metadata, ``input.*`` and ``output.*`` columns)."""

    rows: pd.DataFrame
    skipped: list[str]
    start: dt.datetime
    end: dt.datetime


def log_files(root: str, model: str, start: dt.datetime) -> list[str]:
    """Parquet files of ``model`` in date partitions from ``start``'s day on."""
    fs, path = open_url(model_folder(root, model))
    if not fs.exists(path):
        return []
    first = f"{DATE_PREFIX}{start.date().isoformat()}"
    found = []
    for folder in sorted(fs.ls(path, detail=False)):
        name = folder.rstrip("/").rsplit("/", 1)[-1]
        if name.startswith(DATE_PREFIX) and name >= first:
            found += sorted(f for f in fs.ls(folder, detail=False) if f.endswith(".parquet"))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return [f if protocol == "file" else f"{protocol}://{f}" for f in found]


def read_log_file(uri: str, start: dt.datetime) -> pd.DataFrame:
    """The scored rows of one inference-log file logged since ``start``.

    Raises:
        ValueError: it is not a complete inference-log file (unreadable, columns missing, or
            a body that does not parse).
    """
    try:
        fs, path = open_url(uri)
        with fs.open(path, "rb") as handle:
            requests = pq.read_table(handle).to_pandas()
    except Exception as error:  # truncated or foreign files: pyarrow raises many kinds
        raise ValueError(f"not a readable Parquet file ({type(error).__name__}: {error})") from None
    missing = [c for c in REQUEST_COLUMNS if c not in requests.columns]
    if missing:
        raise ValueError(f"not an inference-log file: columns {missing} are missing")
    recent = requests[pd.to_datetime(requests["logged_at"], utc=True) >= start]
    return expand_requests(recent.reset_index(drop=True))


def load_parquet_window(
    root: str, model: str, start: dt.datetime
) -> tuple[pd.DataFrame, list[str]]:
    """The scored rows logged since ``start``, and a line per file skipped."""
    frames, skipped = [], []
    for uri in log_files(root, model, start):
        try:
            frames.append(read_log_file(uri, start))
        except ValueError as error:
            logger.warning("Skipping inference-log file %s: %s", uri, error)
            skipped.append(f"{uri}: {error}")
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=META_COLUMNS)
    return rows, skipped


def load_sql_window(url: str, model: str, start: dt.datetime) -> pd.DataFrame:
    """The scored rows logged since ``start`` in the SQL inference log."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    table = inference_log_table(sa.MetaData())
    naive_start = start.astimezone(dt.UTC).replace(tzinfo=None)
    query = sa.select(table).where(table.c.model == model, table.c.logged_at >= naive_start)
    try:
        if not sa.inspect(engine).has_table(TABLE_NAME):  # nothing logged yet
            return pd.DataFrame(columns=META_COLUMNS)
        with engine.connect() as connection:
            records = connection.execute(query).mappings().all()
    finally:
        engine.dispose()
    if not records:
        return pd.DataFrame(columns=META_COLUMNS)
    requests = pd.DataFrame([{c: r[c] for c in REQUEST_COLUMNS} for r in records])
    requests["body"] = requests["body"].str.encode("utf-8")
    requests["logged_at"] = pd.to_datetime(requests["logged_at"]).dt.tz_localize("UTC")
    outputs = pd.DataFrame([orjson.loads(r["outputs"]) for r in records])
    return expand_requests(pd.concat([requests, outputs.add_prefix(OUTPUT_PREFIX)], axis=1))


def load_inference_window(
    settings: Settings, model: str, config: MonitoringConfig, now: dt.datetime | None = None
) -> InferenceWindow:
    """The rows the serving instances logged for ``model`` in the configured window."""
    end = now or dt.datetime.now(dt.UTC)
    start = end - dt.timedelta(hours=config.window_hours)
    if settings.inference_log == "sql" and settings.inference_log_url:
        return InferenceWindow(
            load_sql_window(settings.inference_log_url, model, start), [], start, end
        )
    rows, skipped = load_parquet_window(artifact_store(settings).inference_log_root, model, start)
    return InferenceWindow(rows, skipped, start, end)
