"""Run logs in and out of the history: CSV or Parquet export, and a checked import of any log.

An export has the columns of :class:`~infra.allocator.history.RunProfile`. An import reads an
export or a foreign cluster's log: only ``use_case``, ``workers``, ``status`` and ``wall_time_s``
are required, other columns are kept as the job's ``params``, and a ``machine_type`` fills the
shape from the machine catalogue. Every row is checked, and the rows are written in one
transaction, so a bad file changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from .history import COLUMNS, HistoryError, HistoryStore, RunProfile
from .machines import Catalogue


def profiles_frame(profiles: Iterable[RunProfile]) -> pd.DataFrame:
    """Runs as a table with the documented columns (``params`` as JSON text)."""
    rows = [p.model_dump() for p in profiles]
    for row in rows:
        row["params"] = json.dumps(row["params"], sort_keys=True, default=str)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def export_history(store: HistoryStore, path: Path) -> int:
    """Write every run to ``path`` (``.csv`` or ``.parquet``); returns the row count."""
    frame = profiles_frame(store.runs())
    path.parent.mkdir(parents=True, exist_ok=True)
    if _format(path) == "parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return len(frame)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise HistoryError(f"{path}: use a .csv or .parquet file for the allocator history.")


_TEXT_COLUMNS = {
    name
    for name, field in RunProfile.model_fields.items()
    if field.annotation in (str, str | None) or typing.get_origin(field.annotation) is dict
}
REQUIRED_COLUMNS = ("use_case", "workers", "status", "wall_time_s")
"""What every imported row must have; the rest is optional (see docs/allocator.md)."""


def read_history_file(path: Path, catalogue: Catalogue | None = None) -> list[RunProfile]:
    """Read and check every row of a run log: an export, or a foreign cluster's log.

    Columns that are not history columns are kept as the job's ``params``. A row that names a
    ``machine_type`` gets its threads, memory and GPU from ``catalogue`` where it leaves them
    empty; an unknown machine type is an error.

    Raises:
        HistoryError: for a missing file, a missing required column, or an invalid row,
            naming the file, the row (1 = first data row) and the field.
    """
    if not path.is_file():
        raise HistoryError(f"History file not found: {path}")
    kind = _format(path)
    try:
        if kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={c: str for c in _TEXT_COLUMNS})
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise HistoryError(f"{path} could not be read as {kind}: {error}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise HistoryError(
            f"{path}: required column(s) {missing} missing; every run needs "
            f"{', '.join(REQUIRED_COLUMNS)} (docs/allocator.md lists the others)."
        )
    profiles = [
        _row_profile(record, index, path, catalogue)
        for index, record in enumerate(_records(frame), 1)
    ]
    _refuse_duplicates(profiles, path)
    return profiles


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    records = frame.astype(object).to_dict(orient="records")
    return [
        {k: v for k, v in row.items() if not (isinstance(v, float) and math.isnan(v))}
        for row in records
    ]


def _row_profile(
    record: dict[str, Any], index: int, path: Path, catalogue: Catalogue | None
) -> RunProfile:
    where = f"{path}, row {index}"
    params = _params(record.pop("params", None), where)
    params |= {k: _plain(record.pop(k)) for k in list(record) if k not in RunProfile.model_fields}
    record["params"] = params
    record.setdefault("source", "import")
    if record.get("run_id") is None:  # same row, same id: importing a file twice is refused
        digest = hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode())
        record["run_id"] = f"import-{digest.hexdigest()[:20]}"
    if record.get("machine_type") is not None:
        _fill_from_catalogue(record, catalogue, where)
    try:
        return RunProfile.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(row)"
        value = record.get(field, "<missing>")
        hint = (
            "; leave it empty when it was not measured"
            if field == "peak_memory_bytes" and value == 0
            else ""
        )
        raise HistoryError(
            f"{where}: field '{field}' {first['msg'].lower()} (got {value!r}){hint}. "
            "Nothing was imported."
        ) from None


def _params(value: Any, where: str) -> dict[str, Any]:
    """The ``params`` column of an export: JSON text of a mapping."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise HistoryError(
            f"{where}: field 'params' must be a JSON object (got {value!r}). Nothing was imported."
        )
    return parsed


def _plain(value: Any) -> Any:
    """A cell as a JSON-ready Python value: numbers as numbers (text when not finite), times as
    ISO text, arrays as lists, anything else JSON cannot hold as its text."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return str(value)
    return value


def _fill_from_catalogue(record: dict[str, Any], catalogue: Catalogue | None, where: str) -> None:
    name = str(record["machine_type"])
    if catalogue is None or name not in catalogue:
        known = ", ".join(sorted(catalogue.machines)) if catalogue else "none"
        raise HistoryError(
            f"{where}: field 'machine_type' {name!r} is not in the machine catalogue (known: "
            f"{known}); add it to the file named by MLOPS_ALLOCATOR_MACHINES. Nothing was "
            "imported."
        )
    machine = catalogue.get(name)
    record.setdefault("threads_per_worker", machine.vcpus)
    record.setdefault("memory_per_worker_bytes", machine.memory_bytes)
    record.setdefault("gpu", machine.gpus > 0)


def _refuse_duplicates(profiles: list[RunProfile], path: Path) -> None:
    first_row: dict[str, int] = {}
    for index, profile in enumerate(profiles, 1):
        if profile.run_id in first_row:
            derived = (
                " (derived from the row: the same values)"
                if profile.run_id.startswith("import-")
                else ""
            )
            raise HistoryError(
                f"{path}, row {index}: field 'run_id' {profile.run_id!r}{derived} repeats row "
                f"{first_row[profile.run_id]}. Nothing was imported."
            )
        first_row[profile.run_id] = index


def import_history(store: HistoryStore, path: Path, catalogue: Catalogue | None = None) -> int:
    """Add every row of ``path`` to the store in one transaction; returns the row count.

    Raises:
        HistoryError: if any row is invalid or a run id is already recorded; nothing is written.
    """
    profiles = read_history_file(path, catalogue)
    known = store.run_ids()
    clashes = [i for i, p in enumerate(profiles, 1) if p.run_id in known]
    if clashes:
        raise HistoryError(
            f"{path}, row {clashes[0]}: field 'run_id' {profiles[clashes[0] - 1].run_id!r} is "
            f"already in the history ({len(clashes)} such row(s)). Nothing was imported."
        )
    return store.add_all(profiles)
