"""The data source: opened lazily with Dask and its ``data.storage_options``, and fingerprinted."""

from __future__ import annotations

import hashlib

import dask.dataframe as dd

from prefect_mlops.mlops.config import DataConfig
from prefect_mlops.mlops.errors import DataError
from prefect_mlops.mlops.storage import open_url


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
    fs, path = open_url(cfg.source, cfg.storage_options)
    if not fs.exists(path):
        raise DataError(
            f"Data source not found: '{cfg.source}'. Check data.source in the config (or --data); "
            "relative paths are resolved from the current directory."
        )
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
    if len(frame.columns) < 2:
        raise DataError(
            f"'{cfg.source}' has {len(frame.columns)} column(s) {list(frame.columns)}; a target and at "
            "least one feature are needed. If this is a CSV with another delimiter, convert it first."
        )
    return frame


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
