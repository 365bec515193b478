"""The Python API: the pipeline, the allocator's recommendation, serving and batch scoring.

Each function takes the arguments of its ``mlops`` command (``run``, ``recommend``, ``serve``,
``score``) and is what that command calls, so the two cannot drift apart: the command parses
options, calls the function here and formats its result. Errors are the project's
(:mod:`prefect_mlops.mlops.errors`): bad input raises an
:class:`~prefect_mlops.mlops.errors.MlopsError` naming what to fix.
Heavy modules (Prefect, Dask, MLflow) are imported inside the functions, so importing this
module is quick.

    >>> from prefect_mlops import run_pipeline, score
    >>> result = run_pipeline(data="my.csv", target="label")
    >>> scored = score(result.model_name, data="new_rows.csv", out="predictions/")
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_mlops.mlops.errors import ConfigError

if TYPE_CHECKING:
    from prefect_mlops.flows.retrain import PipelineResult
    from prefect_mlops.infra.allocator.planner import Allocation
    from prefect_mlops.mlops.config import PipelineConfig
    from prefect_mlops.serving.batch import BatchScoreResult

Say = Callable[[str], None]
"""Where progress lines go (``print`` from Python, ``typer.echo`` from the command line)."""


# ---------------------------------------------------------------- the pipeline (mlops run)


def config_for_file(
    data: str,
    target: str,
    task: str | None,
    name: str | None,
    families: list[str] | None = None,
) -> PipelineConfig:
    """A config for the bring-your-own-file path: everything inferred from the file, the model
    families (``training.family``) given or LightGBM."""
    from prefect_mlops.mlops.config import parse_config

    stem = Path(data.rstrip("/")).name.split(".")[0] or "dataset"
    use_case = (
        "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.") or "dataset"
    )
    raw: dict[str, Any] = {
        "name": use_case,
        "data": {"source": data, "target": target, "task": task},
        "model": {"name": name or f"{use_case}-model"},
    }
    if families:
        raw["training"] = {"family": families[0] if len(families) == 1 else families}
    return parse_config(raw, origin="the command line")


def preflight(config: PipelineConfig, say: Say = print) -> None:
    """Cheap checks before any service starts: a writable store, a readable file, its columns.

    A declared synthetic source is generated first, with progress through ``say``.

    Raises:
        StorageError: the artifact store cannot be written (exit 1: not bad input).
        MlopsError: the data or config is unusable (exit 2).
    """
    from prefect_mlops.mlops.schema import infer_schema
    from prefect_mlops.mlops.settings import get_settings
    from prefect_mlops.mlops.source import open_source
    from prefect_mlops.mlops.storage import check_artifact_store
    from prefect_mlops.tasks.preprocessing import read_head, write_synthetic_source_if_missing

    check_artifact_store(get_settings())
    if write_synthetic_source_if_missing(config.data):
        say(f"Generated {config.data.synthetic.rows:,} rows -> {config.data.source}")
    source = open_source(config.data)
    infer_schema(read_head(source, config.data.source, rows=1000), config.data, config.features)


def pipeline_config(
    config: str | Path | None = None,
    data: str | None = None,
    target: str | None = None,
    task: str | None = None,
    name: str | None = None,
    family: list[str] | None = None,
) -> PipelineConfig:
    """The use case from a config file, or inferred from a data file and its target column.

    Raises:
        ConfigError: neither or both are given, or the file is invalid.
    """
    from prefect_mlops.mlops.config import load_config

    if config is not None and data is not None:
        raise ConfigError("Pass either --config or --data/--target, not both.")
    if config is not None:
        if family:
            raise ConfigError(
                f"--family is for --data; {config} names its family in training.family."
            )
        return load_config(Path(config), given_as="--config")
    if data is not None and target is not None:
        return config_for_file(data, target, task, name, family)
    raise ConfigError("Pass --config FILE, or --data FILE with --target COLUMN.")


def run_pipeline(
    config: str | Path | None = None,
    data: str | None = None,
    target: str | None = None,
    task: str | None = None,
    name: str | None = None,
    family: list[str] | None = None,
    say: Say = print,
) -> PipelineResult:
    """Run the whole retraining pipeline in this process, no stack needed (``mlops run``).

    Args:
        config: A use-case YAML; or ``data`` and ``target`` to infer everything from a file.
        data: A CSV or Parquet file or folder, local path or fsspec URL.
        target: The column to predict (with ``data``).
        task: ``binary``, ``multiclass`` or ``regression``; inferred when None.
        name: The registered model's name (default ``<file>-model``).
        family: Model families with ``data`` (``lightgbm``, ``xgboost``); default LightGBM.
        say: Where progress lines go.

    Returns:
        The pipeline's result: ``decision`` (``promoted``, ``rejected``, ``rolled-back``), the
        registered version, its metrics and where to look.

    Raises:
        MlopsError: bad input (a config, the data, the data gate) or a failed environment.
    """
    from prefect_mlops.infra.environment import configure_environment
    from prefect_mlops.mlops.settings import get_settings

    configure_environment(get_settings())  # before Prefect is imported
    from prefect_mlops.flows.retrain import retraining_pipeline_flow
    from prefect_mlops.infra.prefect_runtime import without_flow_heartbeats

    resolved = pipeline_config(config, data, target, task, name, family)
    preflight(resolved, say)
    with without_flow_heartbeats():  # no deployment: nothing would watch the heartbeat
        state = retraining_pipeline_flow(resolved, return_state=True)
    if state.is_failed() and state.name not in VERDICT_STATES:
        state.result()  # raises what stopped the pipeline
    return state.result(raise_on_failure=False)


VERDICT_STATES = ("Rejected", "RolledBack")
"""Failed states that are a verdict on the candidate, not an error: the run's result says why."""


# ---------------------------------------------------------------- the allocator (mlops recommend)


def recommend(
    config: str | Path | None = None,
    data: str | None = None,
    target: str | None = None,
    job: str | Path | None = None,
    name: str | None = None,
    family: str | None = None,
    size: str | None = None,
    rows: int | None = None,
    features: int | None = None,
    param: list[str] | None = None,
    machine_type: list[str] | None = None,
    nodes: str | None = None,
    objective: str = "cost",
    deadline: float | None = None,
    budget: float | None = None,
) -> Allocation:
    """The allocator's recommended cluster for a job, without running it (``mlops recommend``).

    For a use case (``config``, or ``data`` with ``target``) the data is preprocessed for its
    meta-features; a job described without data (``job`` JSON, or ``name``/``family``/``size``
    (``--bytes``)/``rows``...) needs only its size. See ``docs/allocator.md``.

    Raises:
        MlopsError: the config, data or job description is unusable.
    """
    from prefect_mlops.infra.environment import configure_environment
    from prefect_mlops.mlops.settings import get_settings

    configure_environment(get_settings())
    described = job is not None or any(
        v for v in (name, family, size, rows, features, param, machine_type, nodes)
    )
    if not described:
        return _recommend_use_case(pipeline_config(config, data, target))
    raw, origin, candidates = _job_description(job)
    flags = {"name": name, "family": family, "rows": rows, "features": features}
    raw |= {k: v for k, v in flags.items() if v is not None}
    if size is not None:
        raw["bytes"] = _parse_size(size)
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE.")
        raw.setdefault("params", {})[key] = value
    return _recommend_described(
        raw, origin, candidates, machine_type or [], nodes, objective, deadline, budget
    )


def _recommend_use_case(config: PipelineConfig) -> Allocation:
    from prefect_mlops.mlops.settings import get_settings
    from prefect_mlops.mlops.source import fingerprint_source
    from prefect_mlops.tasks.allocation import recommend_for_dataset
    from prefect_mlops.tasks.preprocessing import build_dataset_version

    preflight(config)
    dataset = build_dataset_version(
        config, get_settings().resolved_artifact_store, fingerprint_source(config.data)
    )
    return recommend_for_dataset(config, dataset)


def _job_description(job: str | Path | None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    import json

    if job is None:
        return {}, "the command line", {}
    try:
        raw = json.loads(Path(job).read_text())
    except OSError as error:
        raise ConfigError(f"{job}: cannot be read ({error.strerror}).") from None
    except ValueError as error:
        raise ConfigError(f"{job}: not valid JSON ({error}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{job}: expected a JSON object describing the job.")
    candidates = raw.pop("candidates", None) or {}
    if not isinstance(candidates, dict):
        raise ConfigError(f"{job}: field 'candidates' must be an object (machine_types, nodes).")
    return raw, str(job), candidates


def _recommend_described(
    raw: dict[str, Any],
    origin: str,
    candidates: dict[str, Any],
    machine_types: list[str],
    nodes: str | None,
    objective: str,
    deadline: float | None,
    budget: float | None,
) -> Allocation:
    from prefect_mlops.infra.allocator.planner import (
        describe_job,
        described_objective,
        node_spec,
        recommend_for_job,
    )
    from prefect_mlops.mlops.settings import get_settings

    described = describe_job(raw, origin)
    listed = candidates.get("machine_types", [])
    if isinstance(listed, str):
        listed = [part.strip() for part in listed.split(",") if part.strip()]
    if not isinstance(listed, list):
        raise ConfigError(f"{origin}: field 'candidates.machine_types' must be a list of names.")
    types = machine_types or [str(name) for name in listed]
    if nodes is not None:
        counts = node_spec(nodes)
    else:
        counts = node_spec(candidates.get("nodes"), f"{origin}: field 'candidates.nodes'")
    goal = described_objective(objective, deadline, budget)
    return recommend_for_job(described, get_settings(), goal, types, counts)


def _parse_size(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise ConfigError(f"--bytes {text!r}: not a size such as 93.8GB or 2GiB.") from None


# ---------------------------------------------------------------- serving (mlops serve)


def serve(
    model: str,
    host: str | None = None,
    port: int | None = None,
    wait_for_model: bool = False,
    say: Say = print,
) -> None:
    """Serve a registered model over MLflow's scoring protocol until stopped (``mlops serve``).

    Args:
        model: ``NAME`` (its champion), ``NAME@alias``, ``NAME/version`` or a ``models:/`` URI.
        host: The interface (default ``MLOPS_SERVING_HOST``, 127.0.0.1).
        port: The port (default ``MLOPS_SERVING_PORT``, 5001).
        wait_for_model: Start even if the model has no such version yet (503 until one loads).
        say: Where the start-up lines go.

    Raises:
        MlopsError: the reference is not a registry model, or (without ``wait_for_model``)
            the version cannot be loaded.
    """
    from prefect_mlops.infra.environment import configure_environment
    from prefect_mlops.mlops.errors import MlopsError
    from prefect_mlops.mlops.settings import get_settings
    from prefect_mlops.serving.service import build_service, inference_log_target, run_service

    settings = get_settings()
    configure_environment(settings)
    service = build_service(settings, model)
    try:
        service.swapper.load_first()  # sets /health's last_reload_error when it fails
    except MlopsError as error:
        if not wait_for_model:
            raise
        say(f"Waiting for {model}: {error}")
    served = service.state.model
    bind_host, bind_port = host or settings.serving_host, port or settings.serving_port
    what = f"{served.name} version {served.version}" if served else f"{model} (once one loads)"
    say(f"Serving {what} on http://{bind_host}:{bind_port}/invocations")
    if service.log is not None:
        say(
            f"Inference log: {settings.inference_log_sample_rate:.0%} of requests to "
            f"{inference_log_target(settings)}"
        )
    run_service(service, bind_host, bind_port)


# ---------------------------------------------------------------- batch scoring (mlops score)


def score(
    model: str,
    data: str,
    out: str | None = None,
    alias: str | None = None,
    version: str | None = None,
    keep: list[str] | None = None,
    chunk_rows: int = 100_000,
) -> BatchScoreResult:
    """Score a CSV or Parquet file or folder with a registered model version (``mlops score``).

    Args:
        model: The registered model's name; its champion scores unless ``alias`` or
            ``version`` names another.
        data: A file or a folder of ``.csv``/``.parquet`` files, local path or fsspec URL.
        out: A new folder for the predictions (default: ``predictions/<model>/<version>/
            <batch id>/`` in the artifact store).
        alias: Score with this alias.
        version: Score with this version.
        keep: Input columns to copy into the output (ids).
        chunk_rows: Rows read and scored at a time (memory is bounded by it).

    Returns:
        What was written: rows, the output folder and its parts, the batch id, the rows logged.

    Raises:
        MlopsError: the model cannot be loaded, or a file is bad (nothing written then).
    """
    from pydantic import ValidationError

    from prefect_mlops.infra.environment import configure_environment
    from prefect_mlops.mlops.settings import get_settings
    from prefect_mlops.serving.batch import BatchScoreRequest, run_batch_score

    configure_environment(get_settings())
    try:
        request = BatchScoreRequest(
            model=model,
            data=data,
            out=out,
            alias=alias,
            version=version,
            keep=keep or [],
            chunk_rows=chunk_rows,
        )
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise ConfigError(f"Batch scoring options: {problems}.") from None
    return run_batch_score(request)
