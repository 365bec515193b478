"""Pipeline commands: ``run`` (in this process), ``trigger`` (on a stack), ``recommend``."""

from __future__ import annotations

import os
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_mlops.cli._utilities import fail, with_absolute_source
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.config import PipelineConfig, load_config, parse_config
from prefect_mlops.mlops.errors import ConfigError, EnvironmentFailure, MlopsError
from prefect_mlops.mlops.settings import get_settings


class Task(StrEnum):
    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"


def config_for_file(
    data: str,
    target: str,
    task: str | None,
    name: str | None,
    families: list[str] | None = None,
) -> PipelineConfig:
    """A config for the bring-your-own-file path: everything inferred from the file, the model
    families (``training.family``) given or LightGBM."""
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


def preflight(config: PipelineConfig) -> None:
    """Cheap checks before any service starts: a writable store, a readable file, its columns.

    A declared synthetic source is generated first, with progress on the terminal.

    Raises:
        StorageError: the artifact store cannot be written (exit 1: not bad input).
        MlopsError: the data or config is unusable (exit 2).
    """
    from prefect_mlops.mlops.schema import infer_schema
    from prefect_mlops.mlops.source import open_source
    from prefect_mlops.mlops.storage import check_artifact_store
    from prefect_mlops.tasks.preprocessing import read_head, write_synthetic_source_if_missing

    check_artifact_store(get_settings())
    if write_synthetic_source_if_missing(config.data):
        typer.echo(f"Generated {config.data.synthetic.rows:,} rows -> {config.data.source}")
    source = open_source(config.data)
    infer_schema(read_head(source, config.data.source, rows=1000), config.data, config.features)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use-case YAML (see configs/README.md).")
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="CSV or Parquet file/folder, local path or fsspec URL.")
    ] = None,
    target: Annotated[str | None, typer.Option(help="Column to predict (with --data).")] = None,
    task: Annotated[
        Task | None, typer.Option(help="Learning task; inferred from the target if omitted.")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Registered model name (default: <file>-model).")
    ] = None,
    family: Annotated[
        list[str] | None,
        typer.Option(
            help="Model family with --data: lightgbm (default) or xgboost; twice to train both "
            "and keep the better. A config file names it in training.family."
        ),
    ] = None,
) -> None:
    """Run the whole retraining pipeline in this process, no stack needed.

    Stages: preprocess, data gate, train, evaluate, register, model gate, deploy, as
    sub-flows.

    Either `--config configs/<use-case>.yaml`, or `--data FILE --target COLUMN` to infer
    everything from the file. Exit status: 0 when the candidate became champion, 2 for bad
    input (including data that fails the data gate), 3 when the model gate rejected it, 4
    when its deploy failed the smoke test and was rolled back, 1 when the environment failed
    (an artifact store that cannot be written, a server that cannot be reached).
    """
    try:
        if config is not None and data is not None:
            raise ConfigError("Pass either --config or --data/--target, not both.")
        if config is not None:
            if family:
                raise ConfigError(
                    f"--family is for --data; {config} names its family in training.family."
                )
            pipeline_config = load_config(config)
        elif data is not None and target is not None:
            pipeline_config = config_for_file(
                data, target, task.value if task else None, name, family
            )
        else:
            raise ConfigError("Pass --config FILE, or --data FILE with --target COLUMN.")
        preflight(pipeline_config)
        from prefect_mlops.flows.retrain import retraining_pipeline_flow
        from prefect_mlops.infra.prefect_runtime import without_flow_heartbeats

        started = time.perf_counter()
        with without_flow_heartbeats():  # no deployment: nothing would watch the heartbeat
            state = retraining_pipeline_flow(pipeline_config, return_state=True)
        if state.is_failed() and state.name not in VERDICT_STATES:
            state.result()  # raises what stopped the pipeline
        result = state.result(raise_on_failure=False)
    except MlopsError as error:
        fail(error)
    print_summary(result, time.perf_counter() - started)
    exit_for(result.decision)


VERDICT_STATES = ("Rejected", "RolledBack")
"""Failed states that are a verdict on the candidate, not an error: the run's result says why."""
REJECTED_EXIT_CODE = 3
"""``mlops run`` exit status when the model gate rejects the candidate (2 is bad input)."""
ROLLED_BACK_EXIT_CODE = 4
"""``mlops run`` exit status when the deploy's smoke test failed and champion was rolled back."""


def exit_for(decision: str) -> None:
    """End the command with the verdict's exit status: 3 rejected, 4 rolled back (else 0)."""
    if decision == "rejected":
        raise typer.Exit(REJECTED_EXIT_CODE)
    if decision == "rolled-back":
        raise typer.Exit(ROLLED_BACK_EXIT_CODE)


def print_summary(result: Any, seconds: float) -> None:
    """The pipeline's outcome: headline, registered version, gates, metrics, where to look."""
    uri = result.tracking_uri
    name, version = result.model_name, result.model_version
    if result.decision == "promoted":
        previous = (
            f" (previous: version {result.previous_version})" if result.previous_version else ""
        )
        headline = f"{name} version {version} promoted to champion{previous}"
        colour = typer.colors.GREEN
    elif result.decision == "rolled-back":
        stays = f"version {result.champion_version}" if result.champion_version else "none"
        headline = f"{name} version {version} ROLLED BACK by the deploy stage (champion: {stays})"
        colour = typer.colors.RED
    else:
        stays = f"version {result.champion_version}" if result.champion_version else "none"
        headline = f"{name} version {version} REJECTED by the model gate (champion: {stays})"
        colour = typer.colors.YELLOW
    typer.secho(f"\nPipeline finished in {seconds:.0f}s: {headline}.", fg=colour, bold=True)
    typer.echo(f"  Registered model : {name} version {version} (alias '{result.alias}')")
    counts = result.check_counts
    typer.echo(
        f"  Gates            : {counts['pass']} checks passed, {counts['fail']} failed, "
        f"{counts['skip']} skipped (ledger: gate.* tags on the model version)"
    )
    for failure in result.failed_checks:
        typer.echo(f"      {failure}")
    typer.echo(f"  Dataset version  : {result.dataset_version}  ({result.dataset_uri})")
    if result.training_cluster:
        typer.echo(f"  Training cluster : {result.training_cluster}")
    if result.deployment:
        typer.echo(f"  Deployment       : {result.deployment}")
    champion = result.champion_metrics or {}
    header = f"{'':<12}{'candidate':>10}" + (f" {'champion':>10}" if champion else "")
    typer.echo(f"  Test metrics     : {header}")
    for key, value in sorted(result.metrics.items()):
        line = f"      {key:<26} {value:>10.4f}"
        if key in champion:
            line += f" {champion[key]:>10.4f}"
        if key == result.primary_metric:
            line += "  <- primary"
        typer.echo(line)
    threshold = threshold_summary(result.metrics)
    if threshold:
        typer.echo(f"  Threshold        : {threshold}")
    typer.echo(f"  MLflow store     : {uri}")
    typer.echo(f"  Pipeline run     : {result.pipeline_run_id}")
    typer.echo("\nWhere to look:")
    if uri.startswith("http"):
        typer.echo(f"  MLflow UI: {uri}")
    else:
        typer.echo("  mlops ui            # then open http://127.0.0.1:5000")
    typer.echo(
        f"  -> Experiments > {result.experiment_name}: the pipeline run with nested "
        "preprocess/data-gate/train/evaluate/register/model-gate/deploy runs, metrics and plots"
    )
    typer.echo(
        f"  -> Models > {name}: version {version} with alias '{result.alias}' and its "
        "gate.* tags (the gate ledger)"
    )


def threshold_summary(metrics: dict[str, float]) -> str:
    """A binary model's test F1 at its decision threshold, at 0.5, and against the best F1 any
    threshold gives on the test split (empty for other tasks)."""
    if "decision_threshold" not in metrics:
        return ""
    f1, threshold = metrics["f1"], metrics["decision_threshold"]
    line = f"test F1 {f1:.3f} at the decision threshold {threshold:.3g} (chosen on validation)"
    line += f", {metrics['f1_at_0.5']:.3f} at 0.5"
    best = metrics.get("best_possible_f1")
    if best:
        line += (
            f"; the best F1 any threshold gives on test is {best:.3f} "
            f"(at {metrics['best_possible_f1_threshold']:.3g}); ratio {f1 / best:.2f}"
        )
    return line


@app.command()
def trigger(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Use-case YAML; default: the deployment's own parameters."
        ),
    ] = None,
    deployment: Annotated[str, typer.Option(help="Deployment to run, as FLOW/DEPLOYMENT.")] = (
        "retraining-pipeline/retraining-pipeline"
    ),
    wait: Annotated[bool, typer.Option(help="Follow the run until it ends.")] = True,
    timeout: Annotated[
        float | None, typer.Option(help="Stop following after this many seconds.")
    ] = None,
) -> None:
    """Run the retraining pipeline's deployment and follow its stages as workers run them.

    Runs on the local stack, or on the server PREFECT_API_URL names. Exit status as for
    `mlops run`: 0 promoted, 2 bad input (data gate), 3 rejected, 4 rolled back by the deploy
    stage, 1 any other failure (a stage crashed, no worker for a pool).
    """
    if not os.environ.get("PREFECT_API_URL"):
        fail(
            EnvironmentFailure(
                "No Prefect server to trigger on: start the local stack with `mlops up`, or "
                "set PREFECT_API_URL to a server where the project is deployed."
            )
        )
    parameters: dict[str, Any] = {}
    try:
        if config is not None:
            parsed = load_config(config)
            parameters["config"] = with_absolute_source(parsed).model_dump(mode="json")
        from prefect_mlops.infra.deployments import trigger as trigger_deployment

        flow_run = trigger_deployment(deployment, parameters)
    except MlopsError as error:
        fail(error)
    ui = os.environ["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")
    typer.echo(f"Triggered {deployment}: flow run '{flow_run.name}'")
    typer.echo(f"  {ui}/runs/flow-run/{flow_run.id}")
    if not wait:
        return
    follow_pipeline(flow_run.id, timeout)


def follow_pipeline(flow_run_id: Any, timeout: float | None) -> None:
    """Print each stage run as it changes state, then the summary; exit with the verdict."""
    from prefect_mlops.infra.deployments import follow

    def report(event: Any) -> None:
        minutes, seconds = divmod(int(event.elapsed_s), 60)
        pool = event.run.work_pool_name or "-"
        colour = {"Completed": typer.colors.GREEN, "Running": typer.colors.CYAN}.get(
            event.state_name, typer.colors.RED if event.run.state.is_final() else None
        )
        typer.echo(f"  [{minutes:02d}:{seconds:02d}] {event.flow_name:<22} ", nl=False)
        typer.secho(f"{event.state_name:<10}", fg=colour, nl=False)
        typer.echo(f" {pool:<18} {event.run.name}")

    started = time.perf_counter()
    run = follow(flow_run_id, report, timeout_s=timeout)
    state = run.state
    if state is None or not state.is_final():
        typer.echo(f"Still {state.name if state else 'pending'} after {timeout:.0f}s; not waiting.")
        raise typer.Exit(1)
    try:
        if state.is_failed() and state.name not in VERDICT_STATES:
            state.result()  # raises what stopped the pipeline
            raise EnvironmentFailure(f"The pipeline ended {state.name}: {state.message}")
        from prefect_mlops.flows.retrain import PipelineResult

        result = PipelineResult.model_validate(state.result(raise_on_failure=False))
    except MlopsError as error:
        fail(error)
    except Exception as error:  # not bad input: a crash, a lost server (exit 1)
        fail(EnvironmentFailure(f"The pipeline ended {state.name}: {error}"))
    print_summary(result, time.perf_counter() - started)
    exit_for(result.decision)


def _config_from_options(
    config: Path | None, data: str | None, target: str | None
) -> PipelineConfig:
    if config is not None and data is not None:
        raise ConfigError("Pass either --config or --data/--target, not both.")
    if config is not None:
        return load_config(config)
    if data is not None and target is not None:
        return config_for_file(data, target, None, None)
    raise ConfigError("Pass --config FILE, or --data FILE with --target COLUMN.")


@app.command()
def recommend(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Use-case YAML (see configs/README.md).")
    ] = None,
    data: Annotated[str | None, typer.Option(help="CSV or Parquet file/folder.")] = None,
    target: Annotated[str | None, typer.Option(help="Column to predict (with --data).")] = None,
    job: Annotated[
        Path | None,
        typer.Option(
            "--job",
            help="A job described without data: JSON with name, context, family, bytes or rows, "
            "features, params (docs/allocator.md).",
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Job name, as the history names it.")] = None,
    family: Annotated[str | None, typer.Option(help="Job family: spark, lightgbm, ...")] = None,
    size: Annotated[
        str | None, typer.Option("--bytes", help="Input size, e.g. 93.8GB or 2GiB.")
    ] = None,
    rows: Annotated[int | None, typer.Option(help="Input rows.")] = None,
    features: Annotated[int | None, typer.Option(help="Input columns.")] = None,
    param: Annotated[
        list[str] | None, typer.Option(help="Job parameter KEY=VALUE (repeatable).")
    ] = None,
    machine_type: Annotated[
        list[str] | None,
        typer.Option(help="Candidate machine type from the catalogue (repeatable)."),
    ] = None,
    nodes: Annotated[
        str | None, typer.Option(help="Candidate node counts: 4-48 or 4,6,8 (default 1-16).")
    ] = None,
    objective: Annotated[
        str, typer.Option(help="cost (least cost) or time (least time).")
    ] = "cost",
    deadline: Annotated[float | None, typer.Option(help="With cost: seconds at most.")] = None,
    budget: Annotated[float | None, typer.Option(help="With time: cost at most.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the allocation as JSON.")] = False,
) -> None:
    """Recommend the cluster for a job without running it.

    For a use case (--config, or --data with --target) the data is preprocessed (reusing a
    dataset version already written) for its meta-features. A job described without data
    (--job FILE, or --name/--family/--bytes/--rows...) needs only its size. Candidates are
    node counts (--nodes) of catalogue machine types (--machine-type, repeatable), or this
    machine's (or the configured cluster's) shapes. The allocator learns from every recorded
    run, imported ones included.
    """
    described = job is not None or any(
        v for v in (name, family, size, rows, features, param, machine_type, nodes)
    )
    try:
        if described:
            allocation = _recommend_described(
                job,
                name,
                family,
                size,
                rows,
                features,
                param or [],
                machine_type or [],
                nodes,
                objective,
                deadline,
                budget,
            )
        else:
            allocation = _recommend_use_case(config, data, target)
    except MlopsError as error:
        fail(error)
    if as_json:
        typer.echo(allocation.model_dump_json(indent=2))
        return
    from prefect_mlops.infra.allocator.report import allocation_markdown

    typer.echo(allocation_markdown(allocation))


def _recommend_use_case(config: Path | None, data: str | None, target: str | None) -> Any:
    pipeline_config = _config_from_options(config, data, target)
    preflight(pipeline_config)
    from prefect_mlops.mlops.source import fingerprint_source
    from prefect_mlops.tasks.allocation import recommend_for_dataset
    from prefect_mlops.tasks.preprocessing import build_dataset_version

    dataset = build_dataset_version(
        pipeline_config,
        get_settings().resolved_artifact_store,
        fingerprint_source(pipeline_config.data),
    )
    return recommend_for_dataset(pipeline_config, dataset)


def _recommend_described(
    job: Path | None,
    name: str | None,
    family: str | None,
    size: str | None,
    rows: int | None,
    features: int | None,
    params: list[str],
    machine_types: list[str],
    nodes: str | None,
    objective: str,
    deadline: float | None,
    budget: float | None,
) -> Any:
    import json

    from prefect_mlops.infra.allocator.planner import (
        describe_job,
        described_objective,
        node_spec,
        recommend_for_job,
    )

    raw: dict[str, Any] = {}
    origin = "the command line"
    if job is not None:
        origin = str(job)
        try:
            raw = json.loads(job.read_text())
        except OSError as error:
            raise ConfigError(f"{job}: cannot be read ({error.strerror}).") from None
        except ValueError as error:
            raise ConfigError(f"{job}: not valid JSON ({error}).") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{job}: expected a JSON object describing the job.")
    candidates = raw.pop("candidates", None) or {}
    if not isinstance(candidates, dict):
        raise ConfigError(f"{origin}: field 'candidates' must be an object (machine_types, nodes).")
    flags = {"name": name, "family": family, "rows": rows, "features": features}
    raw |= {k: v for k, v in flags.items() if v is not None}
    if size is not None:
        raw["bytes"] = _parse_size(size)
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected KEY=VALUE.")
        raw.setdefault("params", {})[key] = value
    described = describe_job(raw, origin)
    listed = candidates.get("machine_types", [])
    if isinstance(listed, str):
        listed = [part.strip() for part in listed.split(",") if part.strip()]
    if not isinstance(listed, list):
        raise ConfigError(f"{origin}: field 'candidates.machine_types' must be a list of names.")
    types = machine_types or [str(name) for name in listed]
    counts = node_spec(nodes if nodes is not None else candidates.get("nodes"))
    goal = described_objective(objective, deadline, budget)
    return recommend_for_job(described, get_settings(), goal, types, counts)


def _parse_size(text: str) -> int:
    from dask.utils import parse_bytes

    try:
        return int(parse_bytes(text))
    except (ValueError, TypeError):
        raise ConfigError(f"--bytes {text!r}: not a size such as 93.8GB or 2GiB.") from None
