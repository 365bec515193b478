"""Batch scoring: a file or folder of rows scored by a registered model version, in chunks.

The rows (CSV or Parquet, a local path or any fsspec URL) are read a chunk at a time (Parquet
record batches of at most ``chunk_rows`` rows, read one row group at a time; CSV in blocks of
``chunk_rows`` rows), so memory is bounded by the chunk and the row group, not by the file.
Each chunk goes through the service's own path: its columns are checked against the model's
inputs (:func:`serving.payload.check_rows`), its values by the feature code
(:meth:`serving.served_model.ServedModel.predict_rows`), and the family's predictor labels it
with :func:`mlops.prediction.prediction_columns` and the model's stored decision threshold.

Output: one ``part-<n>.parquet`` per input file (a row group per chunk), with the ``--keep``
columns, ``request_id`` (one per chunk: ``<batch id>-<chunk>``), ``row`` (within the chunk),
``model``, ``version`` and the prediction columns. It is written under a hidden name and moved
into place when every file is scored; a bad file leaves nothing behind. Each chunk is also a
request of the inference log (its rows as a CSV body, sampled at the log's rate), staged beside
the log and published with the output, so the drift monitor reads batch traffic as it reads the
service's, and ``(request_id, row)`` joins delayed labels to it as for served requests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.mlops.errors import ConfigError, DataError
from prefect_mlops.mlops.settings import Settings, get_settings
from prefect_mlops.mlops.storage import artifact_store, open_url, staging_url

from .batch_log import StagedLog
from .payload import PayloadError, Rows, check_rows
from .served_model import ServedModel

CHUNK_ROWS = 100_000
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
META_COLUMNS = ("request_id", "row", "model", "version")


class BatchScoreRequest(BaseModel):
    """What to score, with which model version, and where the predictions go."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Registered model name.")
    data: str = Field(description="CSV or Parquet file, or a folder of them; path or fsspec URL.")
    out: str | None = Field(
        default=None,
        description="New folder for the parts; default predictions/<model>/<version>/<batch id>/ "
        "in the artifact store.",
    )
    alias: str | None = Field(default=None, description="Alias to score with (default champion).")
    version: str | None = Field(default=None, description="Version to score with, not an alias.")
    keep: list[str] = Field(
        default_factory=list, description="Input columns copied into the output (ids)."
    )
    chunk_rows: int = Field(default=CHUNK_ROWS, gt=0, description="Rows scored at a time.")

    @property
    def reference(self) -> str:
        """``NAME/version`` or ``NAME@alias`` (champion when neither is given)."""
        if self.version and self.alias:
            raise ConfigError("Pass --alias or --version, not both.")
        if self.version:
            return f"{self.model}/{self.version}"
        return f"{self.model}@{self.alias or 'champion'}"


class BatchScoreResult(BaseModel):
    """What one batch scoring run wrote."""

    model: str
    version: str
    batch_id: str
    rows: int
    inputs: list[str]
    output: str
    parts: list[str]
    logged_rows: int
    log: str | None = None
    seconds: float


# ---------------------------------------------------------------- the input


def input_files(data: str) -> list[tuple[str, str]]:
    """The files of ``data`` (a file, or a folder's CSV and Parquet files) and their formats.

    Raises:
        DataError: it does not exist, or holds no file of a known format.
    """
    fs, path = open_url(data)
    if not fs.exists(path):
        raise DataError(f"--data {data}: not found. Pass a CSV or Parquet file or a folder.")
    if fs.isdir(path):
        root = path.rstrip("/")
        names = sorted(f for f in fs.find(path) if not _hidden(f[len(root) :]))
        found = [(n, file_format(n)) for n in names if file_format(n)]
        if not found:
            raise DataError(f"--data {data}: a folder with no .csv or .parquet file in it.")
    else:
        if not file_format(path):
            raise DataError(f"--data {data}: not a .csv, .csv.gz or .parquet file.")
        found = [(path, file_format(path))]
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [(f"{prefix}{name}", kind) for name, kind in found]


def _hidden(relative: str) -> bool:
    """A path under the folder with a part starting ``.`` or ``_`` (temporary files, markers)."""
    return any(part.startswith((".", "_")) for part in relative.strip("/").split("/"))


def file_format(name: str) -> str:
    """``csv`` or ``parquet`` from the file name; empty when it is neither."""
    lower = name.lower()
    return next((kind for suffix, kind in FORMATS.items() if lower.endswith(suffix)), "")


def file_columns(url: str, kind: str) -> list[str]:
    """The column names of one input file.

    Raises:
        DataError: it cannot be read as its format.
    """
    fs, path = open_url(url)
    try:
        with fs.open(path, "rb") as handle:
            if kind == "parquet":
                return list(pq.read_schema(handle).names)
            return [str(c) for c in pd.read_csv(handle, nrows=0, compression=_compression(url))]
    except Exception as error:  # the readers raise many types for a damaged file
        raise DataError(
            f"{url}: cannot be read as {kind.upper()} ({type(error).__name__}: {error})."
        ) from None


def check_columns(url: str, columns: list[str], model: ServedModel, keep: list[str]) -> list[str]:
    """The columns to read from a file: the model's inputs and ``keep``.

    The model's target column, when present, is left out; any other column the model does not
    take is refused, as the service refuses it.

    Raises:
        DataError: naming the file, the missing and unexpected columns, and what to do.
    """
    inputs = model.spec.input_columns
    target = model.predictor.facts.target
    missing = [c for c in [*inputs, *keep] if c not in columns]
    extra = [c for c in columns if c not in inputs and c not in keep and c != target]
    if missing or extra:
        parts = [f"missing column(s) {missing}"] if missing else []
        if extra:
            parts.append(f"unexpected column(s) {extra} (--keep COLUMN copies one to the output)")
        raise DataError(
            f"{url}: {'; '.join(parts)}. {model.name} version {model.version} takes {inputs}. "
            "Nothing was written."
        )
    return list(dict.fromkeys([*inputs, *keep]))


def read_chunks(
    url: str, kind: str, columns: list[str], chunk_rows: int, kept: Sequence[str] = ()
) -> Iterator[pd.DataFrame]:
    """The file's ``columns`` in frames of at most ``chunk_rows`` rows; in a CSV file, the
    ``kept`` columns as text (ids: every chunk of a part must have the same types).

    Raises:
        DataError: a part of the file cannot be read.
    """
    fs, path = open_url(url)
    try:
        with fs.open(path, "rb") as handle:
            if kind == "parquet":
                reader = pq.ParquetFile(handle)
                for batch in reader.iter_batches(batch_size=chunk_rows, columns=columns):
                    yield batch.to_pandas()
            else:
                yield from pd.read_csv(
                    handle,
                    usecols=columns,
                    chunksize=chunk_rows,
                    compression=_compression(url),
                    dtype=dict.fromkeys(kept, "string"),
                )
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as error:
        raise DataError(
            f"{url}: cannot be read as {kind.upper()} ({type(error).__name__}: {error}). "
            "Nothing was written."
        ) from None


def _compression(url: str) -> str | None:
    return "gzip" if url.lower().endswith(".gz") else None


# ---------------------------------------------------------------- scoring


def score_chunk(
    model: ServedModel, frame: pd.DataFrame, url: str, first_row: int
) -> dict[str, np.ndarray]:
    """The prediction columns of one chunk, checked and scored as the service scores a request.

    Raises:
        DataError: a value the model cannot read, naming the file, column and row (counted
            from 0 over the file's data rows).
    """
    inputs = model.spec.input_columns
    rows = Rows({c: frame[c] for c in inputs}, len(frame))
    try:
        check_rows(rows, model.spec)
        return model.predict_rows(rows)
    except PayloadError as error:
        message = re.sub(
            r"row (\d+)", lambda m: f"row {first_row + int(m[1])}", str(error), count=1
        )
        raise DataError(f"{url}: {message} Nothing was written.") from None


def output_table(
    frame: pd.DataFrame,
    keep: list[str],
    request_id: str,
    model: ServedModel,
    outputs: dict[str, np.ndarray],
) -> pa.Table:
    """One chunk's output rows: the kept columns, the request id and row, the model version,
    and the prediction columns."""
    count = len(frame)
    columns: dict[str, Any] = {name: pa.Array.from_pandas(frame[name]) for name in keep}
    columns |= {
        "request_id": pa.array([request_id] * count, pa.string()),
        "row": pa.array(np.arange(count, dtype="int32")),
        "model": pa.array([model.name] * count, pa.string()),
        "version": pa.array([model.version] * count, pa.string()),
    }
    columns |= {name: np.asarray(values) for name, values in outputs.items()}
    return pa.table(columns)


class PartWriter:
    """One output part: a Parquet file opened at its first chunk, a row group per chunk."""

    def __init__(self, url: str, source: str) -> None:
        self.url, self.source = url, source
        self._handle: Any = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        """Append one chunk (cast to the part's schema, which its first chunk set)."""
        if self._writer is None:
            fs, path = open_url(self.url)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self._handle = fs.open(path, "wb")
            self._writer = pq.ParquetWriter(self._handle, table.schema)
        try:
            self._writer.write_table(table.cast(self._writer.schema))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            raise DataError(
                f"{self.source}: a later chunk's --keep columns have other types than the "
                f"first chunk's ({error}). Nothing was written."
            ) from None

    def close(self) -> bool:
        """Finish the file; whether one was written (an input with no rows writes none)."""
        if self._writer is None:
            return False
        self._writer.close()
        self._handle.close()
        self._writer = None
        return True

    def abandon(self) -> None:
        """Close what is open without caring whether it finishes (the part is removed anyway)."""
        for thing in (self._writer, self._handle):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._writer = self._handle = None


# ---------------------------------------------------------------- one batch


def new_batch_id() -> str:
    """``<UTC time>-<random>``: sortable by when it ran, unique across machines."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


def check_output(out: str) -> None:
    """Refuse an ``--out`` that is a file or a folder with something in it.

    Raises:
        ConfigError: naming it and what to do.
    """
    fs, path = open_url(out)
    if fs.exists(path) and (not fs.isdir(path) or fs.ls(path, detail=False)):
        raise ConfigError(
            f"--out {out}: already exists. Batch scoring writes a new folder; choose another "
            "name or remove it."
        )


def score_batch(
    model: ServedModel, request: BatchScoreRequest, settings: Settings | None = None
) -> BatchScoreResult:
    """Score every file of ``request.data`` with a loaded model version; see the module doc.

    Raises:
        DataError: a file is missing, unreadable, lacks a column, has one the model does not
            take, or a value it cannot read; nothing is written then.
        ConfigError: ``request.out`` exists.
    """
    settings = settings or get_settings()
    started = time.perf_counter()
    files = input_files(request.data)
    columns = {
        url: check_columns(url, file_columns(url, k), model, request.keep) for url, k in files
    }
    batch_id = new_batch_id()
    store = artifact_store(settings)
    final = request.out or store.predictions_folder(model.name, model.version, batch_id)
    check_output(final)
    staging = staging_url(final)
    log = StagedLog(settings, model.name, batch_id) if settings.inference_log != "off" else None
    rows = logged = chunks = 0
    parts: list[str] = []
    writer: PartWriter | None = None
    try:
        for number, (url, kind) in enumerate(files):
            writer, first = PartWriter(f"{staging}/part-{number:05d}.parquet", url), 0
            kept = [c for c in request.keep if c not in model.spec.input_columns]
            for frame in read_chunks(url, kind, columns[url], request.chunk_rows, kept):
                outputs = score_chunk(model, frame, url, first)
                request_id = f"{batch_id}-{chunks:06d}"
                writer.write(output_table(frame, request.keep, request_id, model, outputs))
                if log is not None:
                    inputs = frame[model.spec.input_columns]
                    logged += log.record(request_id, model, inputs, outputs)
                first, chunks = first + len(frame), chunks + 1
            if writer.close():
                parts.append(f"{final.rstrip('/')}/part-{number:05d}.parquet")
            rows += first
        _move_into_place(staging, final)
    except BaseException:
        if writer is not None:
            writer.abandon()
        _remove(staging)
        if log is not None:
            log.discard()
        raise
    where = log.publish() if log is not None else None
    return BatchScoreResult(
        model=model.name,
        version=model.version,
        batch_id=batch_id,
        rows=rows,
        inputs=[url for url, _ in files],
        output=final,
        parts=parts,
        logged_rows=logged,
        log=where,
        seconds=round(time.perf_counter() - started, 3),
    )


def _move_into_place(staging: str, final: str) -> None:
    fs, path = open_url(final)
    _, source = open_url(staging)
    if not fs.exists(source):  # no input row: an empty folder
        fs.makedirs(source, exist_ok=True)
    if fs.exists(path):  # an empty folder (check_output refused anything else)
        fs.rmdir(path)
    fs.makedirs(path.rstrip("/").rpartition("/")[0] or "/", exist_ok=True)
    fs.mv(source, path, recursive=True)


def _remove(url: str) -> None:
    fs, path = open_url(url)
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(path):
            fs.rm(path, recursive=True)


def load_batch_model(request: BatchScoreRequest, settings: Settings | None = None) -> ServedModel:
    """The version ``request`` names, from the registry, checked in a child process first.

    Raises:
        ModelLoadError: it does not exist or is not a pipeline model.
        ConfigError: both an alias and a version are given.
    """
    from mlflow.tracking import MlflowClient

    from prefect_mlops.model_registry.loading import model_check_limits

    from .loader import load_served_model

    settings = settings or get_settings()
    uri = settings.resolved_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    return load_served_model(client, request.reference, uri, model_check_limits(settings))


def run_batch_score(
    request: BatchScoreRequest, settings: Settings | None = None
) -> BatchScoreResult:
    """Load the model version ``request`` names and score its data (``mlops score``)."""
    settings = settings or get_settings()
    return score_batch(load_batch_model(request, settings), request, settings)
