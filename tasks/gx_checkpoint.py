"""Running an expectation suite in a Great Expectations checkpoint, and reading its results.

:func:`validate_frame` runs a suite (from :mod:`tasks.data_gate_checks`) on a frame in a GX
checkpoint that also renders Data Docs; :func:`interpret_results` turns GX's results into
:class:`~mlops.gates.GateCheck` records whose text names the column, the observed value, what
was allowed and a few offending rows. GX never raises for a failed expectation: deciding what a
failure means is the data gate's (:mod:`tasks.data_gate`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from prefect_mlops.mlops.gates import GateCheck
from prefect_mlops.tasks.data_gate_checks import COLUMN_SET, COLUMN_TYPE

SAMPLE_ROWS = 5  # offending rows shown per failed check
DEFERRED_IMPORTS = ("great_expectations", "great_expectations.data_context.types.base")
"""Great Expectations takes seconds to import: only :func:`validate_frame` does, and the fork
servers of the pools running the data gate import it ahead."""


# ---------------------------------------------------------------- running the suite with GX


class Validation(BaseModel):
    """GX's validation result (as JSON) and where its Data Docs were rendered."""

    success: bool
    result: dict[str, Any]
    data_docs_dir: str


def validate_frame(frame: pd.DataFrame, suite: dict[str, Any], out_dir: Path) -> Validation:
    """Run the suite on the frame in a GX checkpoint that renders Data Docs.

    GX does not raise when expectations fail; the caller decides what a failure means.

    Args:
        frame: The rows to validate.
        suite: Suite JSON from :func:`derive_suite` (with its ``name`` set).
        out_dir: Local folder; the Data Docs site is copied to ``out_dir/data_docs``.

    Returns:
        The validation result and the Data Docs folder.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    with tempfile.TemporaryDirectory(prefix="gx-") as project:
        context = gx.get_context(mode="file", project_root_dir=project)
        context.enable_analytics(False)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch = (
            context.data_sources.add_pandas("candidate")
            .add_dataframe_asset("dataset")
            .add_batch_definition_whole_dataframe("all-rows")
        )
        expectation_suite = context.suites.add(gx.ExpectationSuite(**suite))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name="data-gate", data=batch, suite=expectation_suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="data-gate",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs")],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_ROWS},
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        (result,) = outcome.run_results.values()
        site = Path(project) / "gx" / "uncommitted" / "data_docs" / "local_site"
        docs = out_dir / "data_docs"
        # GX's static folder holds 3 MB of tutorial animations the reports never show.
        shutil.copytree(site, docs, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.gif"))
    return Validation(
        success=bool(outcome.success),
        result=json.loads(json.dumps(result.to_json_dict(), default=_jsonable)),
        data_docs_dir=str(docs),
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# ---------------------------------------------------------------- reading GX's results


def interpret_results(
    validation: dict[str, Any], frame: pd.DataFrame, suite: dict[str, Any], context: list[str]
) -> list[GateCheck]:
    """One :class:`GateCheck` per expectation, in suite order, with readable details.

    A column-level expectation that could not run because its column is missing or has the
    wrong type is reported as skipped with that reason (the column or type check fails instead).

    Args:
        validation: GX's validation result as JSON.
        frame: The validated rows (for samples of offending rows).
        suite: The suite that was run (gives the order).
        context: Columns shown beside an offending value (row key, target).
    """
    results = validation["results"]
    broken = _broken_columns(results)
    by_check = {r["expectation_config"]["meta"]["check"]: r for r in results}
    order = [e["meta"]["check"] for e in suite["expectations"]]
    return [_check_from_result(by_check[name], frame, broken, context) for name in order]


def _broken_columns(results: list[dict[str, Any]]) -> dict[str, str]:
    """Columns that are missing or of the wrong type, and why."""
    broken: dict[str, str] = {}
    for item in results:
        config, outcome = item["expectation_config"], item["result"]
        if config["type"] == COLUMN_SET and not item["success"]:
            for column in (outcome.get("details") or {}).get("mismatched", {}).get("missing", []):
                broken[column] = "the column is missing"
        if config["type"] == COLUMN_TYPE and not item["success"]:
            broken.setdefault(config["kwargs"]["column"], "the column has the wrong type")
    return broken


def _check_from_result(
    item: dict[str, Any], frame: pd.DataFrame, broken: dict[str, str], context: list[str]
) -> GateCheck:
    config, outcome = item["expectation_config"], item["result"]
    meta, kwargs = config["meta"], config["kwargs"]
    raised = (item.get("exception_info") or {}).get("raised_exception")
    column = kwargs.get("column")
    measure = meta["measure"]
    verdict = "pass" if item["success"] else "fail"
    detail = ""
    missing = broken.get(column) == "the column is missing"
    if column in broken and (missing or measure != "type"):
        verdict, detail = "skip", f"not evaluated: {broken[column]}"
    elif raised:
        message = item["exception_info"].get("exception_message") or "unknown error"
        detail = f"could not be evaluated: {message}"
    elif not item["success"]:
        detail = _failure_detail(measure, outcome, frame, column, context, kwargs)
    return GateCheck(
        gate="data",
        name=meta["check"],
        description=meta["description"],
        value=None if raised or verdict == "skip" else _measured_value(measure, outcome),
        unit="share" if measure in _SHARES else "",
        threshold=meta["allowed"],
        verdict=verdict,
        detail=detail,
    )


_SHARES = ("unexpected_share", "class_share_in", "class_share_out", "null_share")


def _measured_value(measure: str, outcome: dict[str, Any]) -> float | str | None:
    if measure == "unexpected_share":
        return float(outcome.get("unexpected_percent") or 0.0) / 100
    if measure == "class_share_in":
        return 1.0 - float(outcome.get("unexpected_percent") or 0.0) / 100
    if measure == "class_share_out":
        return float(outcome.get("unexpected_percent") or 0.0) / 100
    if measure == "null_share":
        observed = outcome.get("observed_value")
        return None if observed is None else 1.0 - float(observed)
    if measure == "columns":
        return f"{len(outcome.get('observed_value') or [])} columns"
    observed = outcome.get("observed_value")
    return observed if isinstance(observed, str) or observed is None else float(observed)


def _failure_detail(
    measure: str,
    outcome: dict[str, Any],
    frame: pd.DataFrame,
    column: str | None,
    context: list[str],
    kwargs: dict[str, Any],
) -> str:
    if measure == "columns":
        mismatch = (outcome.get("details") or {}).get("mismatched", {})
        parts = []
        if mismatch.get("missing"):
            parts.append(f"missing {sorted(mismatch['missing'])}")
        if mismatch.get("unexpected"):
            parts.append(f"unexpected {sorted(mismatch['unexpected'])}")
        return "; ".join(parts)
    if measure == "type":
        return f"found {outcome.get('observed_value')}"
    count, total = int(outcome.get("unexpected_count") or 0), int(outcome.get("element_count") or 0)
    if measure in ("class_share_in", "class_share_out"):
        label = kwargs["value_set"][0]
        rows = total - count if measure == "class_share_in" else count
        return f"{rows:,} of {total:,} rows are '{label}'"
    if measure == "unexpected_share":
        sample = sample_rows(frame, outcome, column, context)
        return f"{count:,} of {total:,} rows offend; e.g. {sample}"
    return ""


def sample_rows(
    frame: pd.DataFrame, outcome: dict[str, Any], column: str | None, context: list[str]
) -> str:
    """A few offending rows, as ``row N (key=..., target=...): column=value`` text."""
    indices = [i for i in outcome.get("partial_unexpected_index_list") or [] if isinstance(i, int)]
    if not indices:
        values = outcome.get("partial_unexpected_list") or []
        return ", ".join(repr(v) for v in values[:SAMPLE_ROWS]) or "n/a"
    rows = frame.loc[indices[:SAMPLE_ROWS]]
    keys = [c for c in context if c in frame.columns and c != column]
    described = []
    for index, row in rows.iterrows():
        shown = ", ".join(f"{k}={_plain(row[k])!r}" for k in keys)
        described.append(f"row {index} ({shown}): {column}={_plain(row[column])!r}")
    return "; ".join(described)


def _plain(value: Any) -> Any:
    """numpy/pandas scalars as Python ones, so they print without their type names."""
    if value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value
