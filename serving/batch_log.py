"""The inference-log requests of one scoring batch, staged beside the log until the batch succeeds.

Batch scoring (:mod:`serving.batch`) logs each chunk it scores as one request: its rows as a CSV
body (content type :data:`BATCH_CONTENT_TYPE`, which :mod:`serving.log_reader` parses with the
service's parser), its prediction columns, the chunk's request id. The files wait in a hidden
folder of the model's Parquet log, which readers do not list, and are published (moved into
their ``date=`` folders, or inserted into the SQL log) once the batch's output is in place; a
failed batch removes them, so the log never holds rows of output that was not written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import random
import time

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.mlops.storage import artifact_store, open_url

from .inference_log import LoggedRequest, requests_table
from .log_sinks import SqlSink, day_folder, staging_folder
from .served_model import ServedModel

BATCH_CONTENT_TYPE = "text/csv; source=batch"
"""How a batch chunk is logged: a CSV body (the service's parser reads it back), marked as batch."""


class StagedLog:
    """The inference-log requests of one batch, written aside and published with its output.

    Files wait in a hidden folder of the model's Parquet log; :meth:`publish` moves them into
    their ``date=`` folders (or inserts them into the SQL log), :meth:`discard` removes them.
    """

    def __init__(self, settings: Settings, model: str, batch_id: str) -> None:
        store = artifact_store(settings)
        self.root, self.options = store.inference_log_root, store.options
        self.sql_url = settings.inference_log_url if settings.inference_log == "sql" else None
        if settings.inference_log == "sql" and not self.sql_url:
            raise ConfigError(
                "MLOPS_INFERENCE_LOG=sql needs MLOPS_INFERENCE_LOG_URL (a SQLAlchemy URL)."
            )
        self.sample_rate = settings.inference_log_sample_rate
        self.folder = staging_folder(self.root, model, batch_id)
        self.staged: list[tuple[str, tuple[str, str, str]]] = []

    def record(self, request_id: str, model: ServedModel, rows: pd.DataFrame, outputs: dict) -> int:
        """Stage one chunk as a request (at the log's sample rate); returns the rows staged."""
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return 0
        body = io.BytesIO()
        pa_csv.write_csv(pa.Table.from_pandas(rows, preserve_index=False), body)
        logged = LoggedRequest(
            request_id,
            time.time(),
            model.name,
            model.version,
            BATCH_CONTENT_TYPE,
            body.getvalue(),
            len(rows),
            outputs,
        )
        day = dt.datetime.fromtimestamp(logged.logged_at, dt.UTC).date().isoformat()
        fs, folder = open_url(self.folder, self.options)
        fs.makedirs(folder, exist_ok=True)
        name = f"{request_id}.parquet"
        with fs.open(f"{folder}/{name}", "wb") as handle:
            pq.write_table(requests_table([logged]), handle)
        self.staged.append((name, (model.name, model.version, day)))
        return len(rows)

    def publish(self) -> str | None:
        """Move the staged requests into the log; returns where they went (None: none staged)."""
        if not self.staged:
            self.discard()
            return None
        fs, folder = open_url(self.folder, self.options)
        sink = SqlSink(self.sql_url) if self.sql_url else None
        where = f"{self.root}/{self.staged[0][1][0]}"
        try:
            for name, key in self.staged:
                if sink is not None:
                    with fs.open(f"{folder}/{name}", "rb") as handle:
                        where = sink.write(key, pq.read_table(handle))
                    continue
                _, target = open_url(day_folder(self.root, key[0], key[2]), self.options)
                fs.makedirs(target, exist_ok=True)
                fs.mv(f"{folder}/{name}", f"{target}/{name}")
        finally:
            if sink is not None:
                sink.engine.dispose()  # one batch, one engine: its connections go with it
        self.discard()
        return where

    def discard(self) -> None:
        """Remove what is staged."""
        fs, folder = open_url(self.folder, self.options)
        with contextlib.suppress(FileNotFoundError):
            fs.rm(folder, recursive=True)
