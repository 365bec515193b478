"""The data source: opened lazily with Dask and its ``data.storage_options``, read once into
memory as its partitions (:func:`read_source`), and fingerprinted."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .config import DataConfig
from .errors import DataError
from .storage import open_url


def detect_format(source: str, declared: str) -> str:
    """CSV or Parquet, from the declared format or the file name."""
    if declared != "auto":
        return declared
    name = source.lower().rstrip("/")
    if name.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    return "parquet"


def open_source(cfg: DataConfig) -> dd.DataFrame:
    """Open the source lazily as a partitioned Dask DataFrame.

    CSV columns are read as text and typed by :func:`mlops.schema.coerce_frame`, so a column
    whose first block looks like integers and a later block has blanks reads fine.

    Raises:
        DataError: if the source does not exist or cannot be read as the detected format.
    """
    _check_exists(cfg)
    fmt = detect_format(cfg.source, cfg.format)
    try:
        if fmt == "csv":
            frame = dd.read_csv(
                cfg.source,
                dtype="string",
                blocksize=cfg.blocksize,
                storage_options=cfg.storage_options or None,
            )
        else:
            # One partition per row group: by default Dask reads a single file smaller than
            # 256 MiB on disk as one partition, which for compressed data means all rows at once.
            frame = dd.read_parquet(
                cfg.source, split_row_groups=True, storage_options=cfg.storage_options or None
            )
    except Exception as error:  # the readers raise many types for a corrupt file
        raise DataError(
            f"Could not read '{cfg.source}' as {fmt.upper()}: {type(error).__name__}: {error}. "
            "Check that the file is a complete, valid CSV or Parquet file (data.format can force one)."
        ) from None
    _check_enough_columns(cfg.source, list(frame.columns))
    return frame


def _check_exists(cfg: DataConfig) -> None:
    fs, path = open_url(cfg.source, cfg.storage_options)
    if not fs.exists(path):
        raise DataError(
            f"Data source not found: '{cfg.source}'. Check data.source in the config (or --data); "
            "relative paths are resolved from the current directory."
        )


def _check_enough_columns(source: str, columns: list[str]) -> None:
    if len(columns) < 2:
        raise DataError(
            f"'{source}' has {len(columns)} column(s) {columns}; a target and at "
            "least one feature are needed. If this is a CSV with another delimiter, convert it first."
        )


# ---------------------------------------------------------------- the whole source in memory


@dataclass(frozen=True)
class SourcePartitions:
    """The source's rows in memory, in the partitions :func:`open_source` defines.

    A Parquet file is held as one Arrow table cut at its row groups (one partition each, as
    Dask reads it); other sources as the pandas frames Dask read. :meth:`partition` gives a
    partition as the pandas frame Dask would have given, so typing and splitting see the same
    rows and dtypes whichever way the file was read.
    """

    parts: list[pa.Table | pd.DataFrame]

    def __len__(self) -> int:
        return len(self.parts)

    def partition(self, number: int) -> pd.DataFrame:
        """One partition as pandas (strings as ``string[pyarrow]``, index from 0)."""
        return _as_pandas(self.parts[number])

    def head(self, rows: int, npartitions: int = 4) -> pd.DataFrame:
        """The first ``rows`` rows of the first ``npartitions`` partitions (Dask's ``head``);
        only those rows are converted to pandas."""
        first, wanted = [], rows
        for part in self.parts[:npartitions]:
            first.append(_as_pandas(part.slice(0, wanted) if isinstance(part, pa.Table) else part))
            wanted -= len(part)
            if wanted <= 0:
                break
        head = pd.concat(first) if len(first) > 1 else first[0]
        return head.head(rows)


def _as_pandas(part: pa.Table | pd.DataFrame) -> pd.DataFrame:
    if isinstance(part, pd.DataFrame):
        return part
    return part.to_pandas(types_mapper=_dask_types, use_threads=False, ignore_metadata=False)


def _dask_types(arrow_type: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
    """The pandas dtypes Dask's Parquet reader gives Arrow types that NumPy has no type for."""
    if arrow_type in (pa.string(), pa.large_string()):
        return pd.StringDtype("pyarrow")
    if arrow_type in (pa.date32(), pa.date64()) or pa.types.is_decimal(arrow_type):
        return pd.ArrowDtype(arrow_type)
    return None


def read_source(cfg: DataConfig) -> SourcePartitions:
    """Read the whole source once into memory, in the partitions :func:`open_source` defines.

    A single Parquet file is read by Arrow with threads (its row groups are the partitions);
    a CSV file or a folder is read by Dask, each partition once.

    Raises:
        DataError: if the source does not exist or cannot be read as the detected format.
    """
    fs, path = open_url(cfg.source, cfg.storage_options)
    if detect_format(cfg.source, cfg.format) == "parquet" and fs.isfile(path):
        return _read_parquet_file(cfg, fs, path)
    frame = open_source(cfg)
    return SourcePartitions(list(dask.compute(*frame.to_delayed())))


def _read_parquet_file(cfg: DataConfig, fs, path: str) -> SourcePartitions:
    with fs.open(path, "rb") as handle:
        try:
            parquet = pq.ParquetFile(handle)
        except Exception as error:  # pyarrow raises many types for a corrupt file
            raise DataError(
                f"Could not read '{cfg.source}' as PARQUET: {type(error).__name__}: {error}. "
                "Check that the file is a complete, valid CSV or Parquet file (data.format can "
                "force one)."
            ) from None
        _check_enough_columns(cfg.source, parquet.schema_arrow.names)
        table = parquet.read(use_threads=True)
        sizes = [parquet.metadata.row_group(n).num_rows for n in range(parquet.num_row_groups)]
    if not sizes:  # no row groups: Dask reads one empty partition
        return SourcePartitions([table])
    starts = [sum(sizes[:n]) for n in range(len(sizes))]
    return SourcePartitions(
        [table.slice(start, size) for start, size in zip(starts, sizes, strict=True)]
    )


def fingerprint_source(cfg: DataConfig) -> str:
    """A hash of the source's bytes (local) or of the storage system's unique keys (remote)."""
    fs, path = open_url(cfg.source, cfg.storage_options)
    files = sorted(fs.find(path)) if fs.isdir(path) else [path]
    digest = hashlib.sha256()
    local = "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"
    for name in files:
        digest.update(name.rsplit("/", 1)[-1].encode())
        if local:
            with fs.open(name, "rb") as handle:
                for block in iter(lambda h=handle: h.read(8 << 20), b""):
                    digest.update(block)
        else:
            digest.update(str(fs.ukey(name)).encode())
    return digest.hexdigest()
