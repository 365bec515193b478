"""The data gate: a candidate dataset version checked against its reference before training.

:func:`find_reference` picks the reference (the champion's training data, or the candidate
itself); :func:`load_or_derive_suite` reads or derives the suite of checks
(:mod:`tasks.data_gate_checks`, where a new check goes); :func:`run_data_gate` runs it in a GX
checkpoint (:mod:`tasks.gx_checkpoint`) on the candidate's rows and stores the report beside
them; :func:`log_data_gate` records it in MLflow; :func:`raise_if_data_gate_failed` is the
decision (GX itself never raises). The Prefect tasks of the ``data-gate`` flow are at the end.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact

from prefect_mlops.infra.caching import CACHE_EXPIRATION, inputs_and_code
from prefect_mlops.mlops.config import DataConfig, DataGateConfig, PipelineConfig
from prefect_mlops.mlops.dataset import SPLITS, TARGET_COLUMN, DatasetRef, load_dataset_ref
from prefect_mlops.mlops.errors import DataValidationError
from prefect_mlops.mlops.gates import DataGateResult, GateCheck, artifact_key, checks_table
from prefect_mlops.mlops.storage import DATA_GATE, EXPECTATIONS, open_url, write_text
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.registry import CHAMPION, version_by_alias
from prefect_mlops.tasks.data_gate_checks import (
    ROW_COUNT,
    column_kinds,
    derive_suite,
    profile_reference,
    suite_name_for,
)
from prefect_mlops.tasks.gx_checkpoint import interpret_results, validate_frame
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

SAMPLE_SEED = 20_240_601  # rows drawn when a dataset is larger than max_rows_validated


# ---------------------------------------------------------------- the frame that is validated


def decode_target(codes: np.ndarray, task: str, classes: list[str] | None) -> pd.Series:
    """The target as users know it: class labels (text) or the regression value."""
    if task == "regression" or not classes:
        return pd.Series(codes, dtype="float64")
    labels = np.asarray(classes, dtype=object)[codes.astype(int)]
    return pd.Series(labels, dtype="string")


def to_validation_frame(frame: pd.DataFrame, dataset: DatasetRef) -> pd.DataFrame:
    """Replace the raw target by its decoded form; timestamps as naive UTC. Returns a new frame."""
    codes = frame[TARGET_COLUMN].to_numpy(dtype="float64")
    out = frame.drop(columns=[TARGET_COLUMN]).assign(
        **{dataset.target: decode_target(codes, dataset.task, dataset.classes).to_numpy()}
    )
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].dt.tz_convert("UTC").dt.tz_localize(None)
    if dataset.task != "regression":
        out[dataset.target] = out[dataset.target].astype("string")
    return out


def load_validation_frame(dataset: DatasetRef, max_rows: int | None = None) -> pd.DataFrame:
    """The rows of a dataset version (all splits), target decoded, ready for GX.

    With more than ``max_rows`` rows, a seeded uniform sample of about ``max_rows`` is drawn
    one Parquet part at a time, so memory holds one part plus the sample.
    """
    total = sum(dataset.row_counts.values())
    fraction = 1.0 if max_rows is None or total <= max_rows else max_rows / total
    parts = []
    for number, path in enumerate(_part_files(dataset)):
        fs, local = open_url(path)
        with fs.open(local, "rb") as handle:
            part = pd.read_parquet(handle)
        if fraction < 1.0:
            part = part.sample(frac=fraction, random_state=SAMPLE_SEED + number)
        parts.append(part)
    frame = pd.concat(parts, ignore_index=True)
    return to_validation_frame(frame, dataset)


_LOADED: dict[tuple[str, str, int | None], pd.DataFrame] = {}
"""The last validation frame loaded by :func:`load_or_derive_suite`, kept for
:func:`run_data_gate` (which takes it out): on a first run the dataset is its own reference,
and its rows are read once for both."""


def shared_validation_frame(dataset: DatasetRef, max_rows: int | None, keep: bool) -> pd.DataFrame:
    """:func:`load_validation_frame`, read at most once for the derivation and the validation.

    Args:
        dataset: The dataset version.
        max_rows: As for :func:`load_validation_frame`.
        keep: Keep the frame for the next call (deriving a suite) or hand it over and forget
            it (validating, the last use).
    """
    key = (dataset.uri, dataset.version, max_rows)
    frame = _LOADED.pop(key, None)
    _LOADED.clear()  # at most one frame is kept, and none once the gate has it
    if frame is None:
        frame = load_validation_frame(dataset, max_rows)
    if keep:
        _LOADED[key] = frame
    return frame


def _part_files(dataset: DatasetRef) -> list[str]:
    files = []
    for split in SPLITS:
        fs, base = open_url(dataset.split_uris[split])
        found = sorted(fs.glob(f"{base}/*.parquet")) if fs.isdir(base) else [base]
        files += [
            fs.unstrip_protocol(f) if "://" in dataset.split_uris[split] else f for f in found
        ]
    return files


# ---------------------------------------------------------------- storage


def _write_json(uri: str, payload: Any) -> None:
    write_text(uri, json.dumps(payload, indent=2, default=str))


def _read_json(uri: str) -> Any | None:
    fs, path = open_url(uri)
    if not fs.exists(path):
        return None
    with fs.open(path, "r") as handle:
        return json.load(handle)


def suite_uri_for(reference: DatasetRef, suite_name: str) -> str:
    """Where a suite derived from ``reference`` is kept: beside that dataset version."""
    return f"{reference.uri}/{EXPECTATIONS}/{suite_name}.json"


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
    frame = shared_validation_frame(reference, gate.max_rows_validated, keep=True)
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
    frame = shared_validation_frame(candidate, max_rows, keep=False)
    rows_total = sum(candidate.row_counts.values())
    sampled = len(frame) < rows_total
    by_gx = suite
    if sampled:
        kept = [e for e in suite["expectations"] if e["type"] != ROW_COUNT]
        by_gx = {**suite, "expectations": kept}
    folder = f"{candidate.uri}/{DATA_GATE}/{suite['name']}"
    with tempfile.TemporaryDirectory(prefix="data-gate-") as tmp:
        validation = validate_frame(frame, by_gx, Path(tmp))
        checks = interpret_results(
            validation.result, frame, by_gx, context_columns(candidate, frame)
        )
        fs, base = open_url(folder)
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
    write_text(result.report_uri, data_gate_markdown(result))
    return result


def _with_exact_row_count(
    suite: dict[str, Any], checks: list[GateCheck], rows_total: int
) -> list[GateCheck]:
    """The checks with the row-count expectation evaluated on the exact count, in suite order."""
    found = [e for e in suite["expectations"] if e["type"] == ROW_COUNT]
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


def raise_if_data_gate_failed(result: DataGateResult, source: str) -> None:
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
            fs, base = open_url(result.data_docs_uri.removesuffix("/index.html"))
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
def find_reference_dataset(config: PipelineConfig, candidate: DatasetRef) -> tuple[DatasetRef, str]:
    """Find the champion's training data (or use the candidate as the first reference)."""
    client, _ = experiment_for(config)
    return find_reference(client, config.model.name, candidate)


@task(name="derive-expectation-suite", retries=1, retry_delay_seconds=5)
def derive_expectation_suite(
    config: PipelineConfig, reference: DatasetRef
) -> tuple[dict[str, Any], str]:
    """Read the stored suite for the reference, or derive and store it."""
    return load_or_derive_suite(reference, config.data_gate, config.data)


@task(
    name="validate-dataset",
    cache_policy=inputs_and_code(
        "prefect_mlops.tasks.data_gate",
        "prefect_mlops.tasks.data_gate_checks",
        "prefect_mlops.tasks.gx_checkpoint",
        "prefect_mlops.mlops.gates",
        "prefect_mlops.mlops.dataset",
        "prefect_mlops.mlops.storage",
    ),
    cache_expiration=CACHE_EXPIRATION,
    result_serializer="json",
)
def validate_dataset(
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
def record_data_gate(
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
def enforce_data_gate(result: DataGateResult, source: str) -> None:
    """Raise when the data gate failed (GX reports failures; it never raises)."""
    raise_if_data_gate_failed(result, source)
