"""The data gate: run the derived suite on a candidate dataset with Great Expectations.

:func:`validate_frame` runs the suite from :mod:`tasks.expectations` in a GX checkpoint that
also renders Data Docs; :func:`interpret_results` turns GX's results into
:class:`~mlops.gates.GateCheck` records whose text names the column, the observed value, what was
allowed and a few offending rows. :func:`run_data_gate` does both for a dataset version and stores
the report beside it; the flow raises when the gate fails (GX itself never does).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from infra.caching import CACHE_EXPIRATION, inputs_and_code
from mlops.config import DataConfig, DataGateConfig, PipelineConfig
from mlops.dataset import SPLITS, DatasetRef
from mlops.errors import DataValidationError
from mlops.gates import DataGateResult, GateCheck, artifact_key, checks_table
from model_registry import tracking
from model_registry.registry import CHAMPION, version_by_alias
from tasks.expectations import (
    column_kinds,
    derive_suite,
    profile_reference,
    suite_name_for,
    to_validation_frame,
)
from tasks.preprocessing import load_dataset_ref
from tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 5  # offending rows shown per failed check
SAMPLE_SEED = 20_240_601  # rows drawn when a dataset is larger than max_rows_validated


# ---------------------------------------------------------------- the frame that is validated


def load_validation_frame(dataset: DatasetRef, max_rows: int | None = None) -> pd.DataFrame:
    """The rows of a dataset version (all splits), target decoded, ready for GX.

    With more than ``max_rows`` rows, a seeded uniform sample of about ``max_rows`` is drawn
    one Parquet part at a time, so memory holds one part plus the sample.
    """
    total = sum(dataset.row_counts.values())
    fraction = 1.0 if max_rows is None or total <= max_rows else max_rows / total
    parts = []
    for number, path in enumerate(_part_files(dataset)):
        with fsspec.open(path, "rb") as handle:
            part = pd.read_parquet(handle)
        if fraction < 1.0:
            part = part.sample(frac=fraction, random_state=SAMPLE_SEED + number)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return to_validation_frame(frame, dataset)


def _part_files(dataset: DatasetRef) -> list[str]:
    files = []
    for split in SPLITS:
        fs, base = fsspec.core.url_to_fs(dataset.split_uris[split])
        found = sorted(fs.glob(f"{base}/*.parquet")) if fs.isdir(base) else [base]
        files += [
            fs.unstrip_protocol(f) if "://" in dataset.split_uris[split] else f for f in found
        ]
    return files


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
        if config["type"] == "expect_table_columns_to_match_set" and not item["success"]:
            for column in (outcome.get("details") or {}).get("mismatched", {}).get("missing", []):
                broken[column] = "the column is missing"
        if config["type"] == "expect_column_values_to_be_in_type_list" and not item["success"]:
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


# ---------------------------------------------------------------- storage


def _write_json(uri: str, payload: Any) -> None:
    with fsspec.open(uri, "w") as handle:
        handle.write(json.dumps(payload, indent=2, default=str))


def _read_json(uri: str) -> Any | None:
    fs, path = fsspec.core.url_to_fs(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)


def suite_uri_for(reference: DatasetRef, suite_name: str) -> str:
    """Where a suite derived from ``reference`` is kept: beside that dataset version."""
    return f"{reference.uri}/expectations/{suite_name}.json"


def load_or_derive_suite(
    reference: DatasetRef, gate: DataGateConfig, data: DataConfig
) -> tuple[dict[str, Any], str]:
    """The suite for this reference and these settings: read if stored, else derived and stored.

    Returns:
        The suite (GX JSON, with its name) and its URI.
    """
    name = suite_name_for(reference, gate, data)
    uri = suite_uri_for(reference, name)
    stored = _read_json(uri)
    if stored is not None:
        logger.info("Using the stored expectation suite %s", uri)
        return stored, uri
    frame = load_validation_frame(reference, gate.max_rows_validated)
    rows = sum(reference.row_counts.values())
    profile = profile_reference(frame, reference, gate.max_listed_categories, rows)
    suite = derive_suite(profile, gate, data)
    suite["name"] = name
    suite["meta"] = {"reference_dataset": reference.name, "reference_version": reference.version}
    _write_json(uri.removesuffix(".json") + ".profile.json", profile.model_dump(mode="json"))
    _write_json(uri, suite)  # written last: a suite file is always complete
    logger.info(
        "Derived %d expectations from dataset %s (%d rows) -> %s",
        len(suite["expectations"]),
        reference.version,
        profile.rows,
        uri,
    )
    return suite, uri


# ---------------------------------------------------------------- the gate


def context_columns(dataset: DatasetRef, frame: pd.DataFrame) -> list[str]:
    """Columns shown beside an offending value: the row key(s), then the target."""
    kinds = column_kinds(dataset, list(frame.columns))
    return [c for c, kind in kinds.items() if kind == "key"] + [dataset.target]


def run_data_gate(
    candidate: DatasetRef,
    reference: DatasetRef,
    reference_origin: str,
    suite: dict[str, Any],
    suite_uri: str,
    max_rows: int | None = None,
) -> DataGateResult:
    """Validate the candidate's rows with the suite and store the report beside it.

    Datasets larger than ``max_rows`` are validated on a seeded uniform sample; the row-count
    expectation is then evaluated on the exact count (GX would only see the sample). Stored under
    ``<candidate>/data-gate/<suite>/``: ``result.json`` (GX's result), ``report.md`` and the
    ``data_docs/`` site.

    Returns:
        The verdict and every check; failing the pipeline is the caller's decision.
    """
    frame = load_validation_frame(candidate, max_rows)
    rows_total = sum(candidate.row_counts.values())
    sampled = len(frame) < rows_total
    by_gx = suite
    if sampled:
        kept = [e for e in suite["expectations"] if e["type"] != _ROW_COUNT]
        by_gx = {**suite, "expectations": kept}
    folder = f"{candidate.uri}/data-gate/{suite['name']}"
    with tempfile.TemporaryDirectory(prefix="data-gate-") as tmp:
        validation = validate_frame(frame, by_gx, Path(tmp))
        checks = interpret_results(
            validation.result, frame, by_gx, context_columns(candidate, frame)
        )
        fs, base = fsspec.core.url_to_fs(folder)
        fs.makedirs(base, exist_ok=True)
        fs.put(validation.data_docs_dir, f"{base}/data_docs", recursive=True)
    if sampled:
        checks = _with_exact_row_count(suite, checks, rows_total)
    _write_json(f"{folder}/result.json", validation.result)
    result = DataGateResult(
        passed=not any(c.verdict == "fail" for c in checks),
        dataset_version=candidate.version,
        reference_version=reference.version,
        reference_origin=reference_origin,
        suite_name=suite["name"],
        suite_uri=suite_uri,
        report_uri=f"{folder}/report.md",
        data_docs_uri=f"{folder}/data_docs/index.html",
        rows_validated=len(frame),
        rows_total=rows_total,
        checks=checks,
    )
    with fsspec.open(result.report_uri, "w") as handle:
        handle.write(data_gate_markdown(result))
    return result


_ROW_COUNT = "expect_table_row_count_to_be_between"


def _with_exact_row_count(
    suite: dict[str, Any], checks: list[GateCheck], rows_total: int
) -> list[GateCheck]:
    """The checks with the row-count expectation evaluated on the exact count, in suite order."""
    found = [e for e in suite["expectations"] if e["type"] == _ROW_COUNT]
    if not found:
        return checks
    expectation = found[0]
    low, high = expectation["kwargs"]["min_value"], expectation["kwargs"]["max_value"]
    inside = (low is None or rows_total >= low) and (high is None or rows_total <= high)
    exact = GateCheck(
        gate="data",
        name=expectation["meta"]["check"],
        description=expectation["meta"]["description"],
        value=float(rows_total),
        threshold=expectation["meta"]["allowed"],
        verdict="pass" if inside else "fail",
        detail="exact count from preprocessing (the other expectations ran on a sample)",
    )
    position = suite["expectations"].index(expectation)
    return [*checks[:position], exact, *checks[position:]]


def data_gate_markdown(result: DataGateResult, data_docs_link: str | None = None) -> str:
    """The data gate's report: verdict, reference, failures first, then every check."""
    verdict = "PASSED" if result.passed else "FAILED"
    failed = result.failures
    lines = [
        f"# Data gate {verdict}: dataset {result.dataset_version}",
        "",
        f"- Reference: {result.reference_origin} (dataset {result.reference_version})",
        f"- Suite: `{result.suite_name}` ({len(result.checks)} expectations), "
        f"stored at `{result.suite_uri}`",
        f"- Rows validated: {result.rows_validated:,}"
        + (
            f" (a seeded uniform sample of {result.rows_total:,}; the row count is exact)"
            if result.rows_validated < result.rows_total
            else ""
        ),
        f"- Great Expectations Data Docs: {_markdown_link(data_docs_link or result.data_docs_uri)}",
        "",
    ]
    if failed:
        lines += ["## Failed expectations", ""]
        lines += [f"- **{c.description}**: {c.summary()}" for c in failed]
        lines.append("")
    lines += ["## Every expectation", "", checks_table(result.checks), ""]
    return "\n".join(lines)


def _markdown_link(uri: str) -> str:
    """A clickable markdown link; plain local paths become file URLs."""
    target = uri if "://" in uri or uri.startswith("file:") else Path(uri).resolve().as_uri()
    return f"[{uri}]({target})"


def data_gate_error(result: DataGateResult, source: str) -> str:
    """The message the pipeline stops with when the data gate fails."""
    failed = result.failures
    listed = "\n".join(f"  - {c.description}: {c.summary()}" for c in failed)
    return (
        f"Data gate failed for '{source}' (dataset version {result.dataset_version}): "
        f"{len(failed)} of {len(result.checks)} expectations failed against "
        f"{result.reference_origin} (dataset {result.reference_version}):\n{listed}\n"
        f"Nothing was trained or registered. Report: {result.report_uri}. If this change is "
        "expected, adjust the data_gate section of the config (see configs/README.md)."
    )


def enforce_data_gate(result: DataGateResult, source: str) -> None:
    """Stop the pipeline when the data gate failed.

    Raises:
        DataValidationError: listing each failed expectation, observed vs allowed.
    """
    if not result.passed:
        raise DataValidationError(data_gate_error(result, source))


def find_reference(
    client: MlflowClient, model_name: str, candidate: DatasetRef
) -> tuple[DatasetRef, str]:
    """The dataset the current champion was trained on, and how to describe it.

    Without a champion the candidate is its own reference (the first accepted dataset). If the
    champion's dataset is gone from the artifact store, the candidate is used too, and the
    description says so (it shows in the report and the ledger).
    """
    champion = version_by_alias(client, model_name, CHAMPION)
    if champion is None:
        return candidate, "this dataset itself (no champion yet: the first accepted dataset)"
    uri = champion.tags.get("data.uri")
    reference = load_dataset_ref(uri) if uri else None
    if reference is None:
        logger.warning(
            "The training data of %s version %s (%s) is no longer available; "
            "deriving the data gate's suite from the candidate itself",
            model_name,
            champion.version,
            uri,
        )
        return candidate, (
            f"this dataset itself (the training data of champion version {champion.version}, "
            f"{uri}, is no longer available)"
        )
    return reference, f"the training data of champion version {champion.version}"


def log_data_gate(
    client: MlflowClient,
    experiment_id: str,
    result: DataGateResult,
    parent_run_id: str | None,
    tags: dict[str, str],
) -> str:
    """Record the data gate in a ``data-gate`` run: counts, suite, report and the Data Docs site."""
    with tracking.stage_run(client, experiment_id, "data-gate", parent_run_id, tags) as run:
        run_id = run.run_id
        tracking.log_params(
            client,
            run_id,
            {
                "dataset.version": result.dataset_version,
                "reference.version": result.reference_version,
                "reference.origin": result.reference_origin,
                "suite.name": result.suite_name,
                "suite.uri": result.suite_uri,
                "rows_validated": result.rows_validated,
            },
        )
        counts = {v: sum(c.verdict == v for c in result.checks) for v in ("pass", "fail", "skip")}
        tracking.log_metrics(
            client,
            run_id,
            {
                "expectations_passed": counts["pass"],
                "expectations_failed": counts["fail"],
                "expectations_skipped": counts["skip"],
            },
        )
        tracking.set_tags(
            client, run_id, {"gate.data.verdict": "passed" if result.passed else "failed"}
        )
        with tempfile.TemporaryDirectory(prefix="data-docs-") as tmp:
            fs, base = fsspec.core.url_to_fs(result.data_docs_uri.removesuffix("/index.html"))
            fs.get(base, f"{tmp}/data_docs", recursive=True)
            client.log_artifacts(run_id, f"{tmp}/data_docs", "data_docs")
        tracking.log_json(client, run_id, _read_json(result.suite_uri), "expectation_suite.json")
        tracking.log_json(client, run_id, [c.model_dump() for c in result.checks], "data_gate.json")
        link = tracking.artifact_url(client, run_id, "data_docs/index.html")
        client.log_text(run_id, data_gate_markdown(result, link), "data_gate_report.md")
        run.status = "FINISHED" if result.passed else "FAILED"
    return run_id


# ---------------------------------------------------------------- Prefect tasks


@task(name="find-reference-dataset", retries=2, retry_delay_seconds=[2, 10])
def find_reference_task(config: PipelineConfig, candidate: DatasetRef) -> tuple[DatasetRef, str]:
    """Find the champion's training data (or use the candidate as the first reference)."""
    client, _ = experiment_for(config)
    return find_reference(client, config.model.name, candidate)


@task(name="derive-expectation-suite", retries=1, retry_delay_seconds=5)
def derive_suite_task(config: PipelineConfig, reference: DatasetRef) -> tuple[dict[str, Any], str]:
    """Read the stored suite for the reference, or derive and store it."""
    return load_or_derive_suite(reference, config.data_gate, config.data)


@task(
    name="validate-dataset",
    cache_policy=inputs_and_code("tasks.data_validation", "tasks.expectations", "mlops.gates"),
    cache_expiration=CACHE_EXPIRATION,
    result_serializer="json",
)
def validate_dataset_task(
    candidate: DatasetRef,
    reference: DatasetRef,
    reference_origin: str,
    suite: dict[str, Any],
    suite_uri: str,
    max_rows_validated: int | None,
) -> DataGateResult:
    """Run the suite on the candidate's rows (a sample above the limit) in a GX checkpoint."""
    return run_data_gate(
        candidate, reference, reference_origin, suite, suite_uri, max_rows_validated
    )


@task(name="record-data-gate")
def record_data_gate_task(
    config: PipelineConfig, result: DataGateResult, parent_run_id: str | None
) -> DataGateResult:
    """Log the data gate to MLflow and summarise it in a Prefect markdown artifact."""
    client, experiment_id = experiment_for(config)
    run_id = log_data_gate(client, experiment_id, result, parent_run_id, lineage_tags(config))
    link = tracking.artifact_url(client, run_id, "data_docs/index.html")
    create_markdown_artifact(
        markdown=data_gate_markdown(result, link),
        key=artifact_key("data-gate", config.name),
        description=f"Data gate {'passed' if result.passed else 'failed'} for {config.name}",
    )
    return result.model_copy(update={"mlflow_run_id": run_id})


@task(name="enforce-data-gate")
def enforce_data_gate_task(result: DataGateResult, source: str) -> None:
    """Raise when the data gate failed (GX reports failures; it never raises)."""
    enforce_data_gate(result, source)
