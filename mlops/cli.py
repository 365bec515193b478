"""The ``mlops`` command line: run the pipeline, generate demo data, open the MLflow UI."""

from __future__ import annotations

import os
import subprocess
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from mlops.config import PipelineConfig, load_config, parse_config
from mlops.errors import ConfigError, EnvironmentFailure, MlopsError
from mlops.settings import configure_environment, get_settings

app = typer.Typer(
    help="Retraining pipeline for tabular models: Prefect flows, LightGBM on Dask, MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs re-flow to the terminal width
)


class Task(StrEnum):
    binary = "binary"
    multiclass = "multiclass"
    regression = "regression"


class Generator(StrEnum):
    fraud = "fraud"
    car_dealership = "car_dealership"


@app.callback()
def _configure() -> None:
    """Runs before every command: local Prefect/Dask environment, before either is imported."""
    configure_environment(get_settings())


def _fail(error: Exception) -> None:
    """Print the error as one paragraph and exit with its code (2 bad input, 1 environment)."""
    typer.secho(f"\nerror: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def config_for_file(data: str, target: str, task: str | None, name: str | None) -> PipelineConfig:
    """A config for the bring-your-own-file path: everything inferred from the file."""
    stem = Path(data.rstrip("/")).name.split(".")[0] or "dataset"
    use_case = (
        "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in stem).strip("-.") or "dataset"
    )
    raw: dict[str, Any] = {
        "name": use_case,
        "data": {"source": data, "target": target, "task": task},
        "model": {"name": name or f"{use_case}-model"},
    }
    return parse_config(raw, origin="the command line")


def preflight(config: PipelineConfig) -> None:
    """Cheap checks before any service starts: a writable store, a readable file, its columns.

    A declared synthetic source is generated first, with progress on the terminal.

    Raises:
        StorageError: the artifact store cannot be written (exit 1: not bad input).
        MlopsError: the data or config is unusable (exit 2).
    """
    from infra.storage import check_artifact_store
    from tasks.preprocessing import ensure_synthetic_source, infer_schema, open_source, read_head

    check_artifact_store(get_settings())
    if ensure_synthetic_source(config.data):
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
            pipeline_config = load_config(config)
        elif data is not None and target is not None:
            pipeline_config = config_for_file(data, target, task.value if task else None, name)
        else:
            raise ConfigError("Pass --config FILE, or --data FILE with --target COLUMN.")
        preflight(pipeline_config)
        from flows.retrain import retraining_pipeline_flow
        from infra.prefect_runtime import without_flow_heartbeats

        started = time.perf_counter()
        with without_flow_heartbeats():  # no deployment: nothing would watch the heartbeat
            state = retraining_pipeline_flow(pipeline_config, return_state=True)
        if state.is_failed() and state.name not in VERDICT_STATES:
            state.result()  # raises what stopped the pipeline
        result = state.result(raise_on_failure=False)
    except MlopsError as error:
        _fail(error)
    _print_summary(result, time.perf_counter() - started)
    _exit_for(result.decision)


VERDICT_STATES = ("Rejected", "RolledBack")
"""Failed states that are a verdict on the candidate, not an error: the run's result says why."""
REJECTED_EXIT_CODE = 3
"""``mlops run`` exit status when the model gate rejects the candidate (2 is bad input)."""
ROLLED_BACK_EXIT_CODE = 4
"""``mlops run`` exit status when the deploy's smoke test failed and champion was rolled back."""


def _exit_for(decision: str) -> None:
    if decision == "rejected":
        raise typer.Exit(REJECTED_EXIT_CODE)
    if decision == "rolled-back":
        raise typer.Exit(ROLLED_BACK_EXIT_CODE)


def _print_summary(result: Any, seconds: float) -> None:
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
    header = f"{'candidate':>10}" + (f" {'champion':>10}" if champion else "")
    typer.echo(f"  Test metrics     : {header}")
    for key, value in sorted(result.metrics.items()):
        line = f"      {key:<18} {value:>10.4f}"
        if key in champion:
            line += f" {champion[key]:>10.4f}"
        if key == result.primary_metric:
            line += "  <- primary"
        typer.echo(line)
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


@app.command()
def generate(
    generator: Annotated[Generator, typer.Argument(help="Which use case's data to generate.")],
    out: Annotated[Path, typer.Option(help="Output file: .csv for CSV, otherwise Parquet.")],
    rows: Annotated[
        int, typer.Option(min=1, help="Number of rows (any size; written in chunks).")
    ] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same data.")] = 0,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Rows held in memory at a time.")
    ] = 250_000,
) -> None:
    """Write a seeded synthetic dataset (fraud or car_dealership) of any size, chunk by chunk."""
    from mlops.synthetic import write_dataset

    started = time.perf_counter()
    last = [0.0]

    def progress(done: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 2 or done == rows:
            last[0] = now
            typer.echo(f"  {done:>12,} / {rows:,} rows ({100 * done / rows:5.1f}%)", err=True)

    path = write_dataset(
        generator.value, rows, out, seed=seed, chunk_rows=chunk_rows, progress=progress
    )
    size = path.stat().st_size / 2**20
    typer.echo(
        f"Wrote {rows:,} rows to {path} ({size:,.1f} MiB) in {time.perf_counter() - started:.1f}s"
    )


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[
        str, typer.Option(help="Interface to bind; loopback by default.")
    ] = "127.0.0.1",
) -> None:
    """Start the MLflow UI on the project's tracking store (Ctrl-C to stop)."""
    settings = get_settings()
    uri = settings.resolved_tracking_uri
    if uri.startswith("http"):
        typer.echo(
            f"The MLflow UI is already served at {uri} (the local stack, or MLFLOW_TRACKING_URI)."
        )
        return
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    from infra.stack import console_script

    command = [
        console_script("mlflow"),
        "ui",
        "--backend-store-uri",
        uri,
        "--default-artifact-root",
        settings.experiment_artifact_root,
        "--host",
        host,
        "--port",
        str(port),
    ]
    typer.echo(f"MLflow UI on http://{host}:{port} (store: {uri})")
    typer.echo("  " + " ".join(command))
    raise typer.Exit(subprocess.call(command, env=os.environ.copy()))


@app.command("mlflow-server")
def mlflow_server(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    workers: Annotated[int, typer.Option(help="Server worker processes.")] = 2,
) -> None:
    """Run the MLflow tracking server (registry included) that these settings describe.

    The backend store is MLOPS_MLFLOW_BACKEND_STORE_URI (e.g. postgresql://user:pw@db/mlflow;
    default: SQLite under MLOPS_HOME), artifacts go to MLOPS_MLFLOW_ARTIFACT_ROOT, or through
    the server to MLOPS_MLFLOW_ARTIFACTS_DESTINATION. With MLOPS_MLFLOW_ADMIN_PASSWORD set, MLflow's
    basic-auth app runs: every request needs a user, the admin is
    MLOPS_MLFLOW_ADMIN_USERNAME, and a guessable password (MLflow's old default, under 12
    characters) stops the start with exit 2. The process becomes the server (for containers).
    """
    from infra.mlflow_server import mlflow_server_launch

    try:
        launch = mlflow_server_launch(get_settings(), host, port, workers)
    except MlopsError as error:
        _fail(error)
    auth = "basic-auth app on" if launch.authenticated else "no authentication"
    typer.echo(f"MLflow server on http://{host}:{port} ({auth})", err=True)
    os.execvpe(launch.command[0], launch.command, os.environ | launch.env)


# ---------------------------------------------------------------- the local stack


@app.command()
def up(
    prefect_port: Annotated[
        int | None, typer.Option(help="Prefect server port [default: 4200, MLOPS_PREFECT_PORT].")
    ] = None,
    mlflow_port: Annotated[
        int | None, typer.Option(help="MLflow server port [default: 5000, MLOPS_MLFLOW_PORT].")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Interface to bind [default: 127.0.0.1, MLOPS_STACK_HOST].")
    ] = None,
    serving_port: Annotated[
        int | None, typer.Option(help="Serving instance port [default: 5001, MLOPS_SERVING_PORT].")
    ] = None,
    serve_model: Annotated[
        str | None,
        typer.Option(
            help="Model the serving instance serves (its champion) "
            "[default: fraud-detector, MLOPS_SERVING_MODEL]."
        ),
    ] = None,
    project_dir: Annotated[
        Path | None, typer.Option(help="Directory with prefect.yaml [default: this project].")
    ] = None,
    redeploy: Annotated[
        bool,
        typer.Option(
            help="Deploy prefect.yaml again even if it and flows/ are unchanged "
            "(resets schedules paused in the UI)."
        ),
    ] = False,
) -> None:
    """Start the local stack in the background: Prefect and MLflow servers, a serving instance, a worker per pool.

    The serving instance (`mlops serve`) waits for the model's first champion and is reloaded
    by the deploy stage; its inference log feeds the drift monitor. Also creates the work pools and deploys prefect.yaml (prefect deploy --all). State lives
    under .mlops/ (SQLite databases, artifacts; logs in .mlops/stack/logs). Running it again
    keeps what runs, restarts what died, and deploys again only if prefect.yaml or flows/
    changed. Every port is checked before anything starts; if a component still fails to
    start, what this call started is stopped again (exit 1). Last, a supervisor starts: it
    restarts a server or worker that dies (`mlops status` counts the restarts). Stop it all
    with `mlops down`.
    """
    from infra.stack import StackOptions, bring_up, find_project_dir

    settings = get_settings()
    try:
        asked = StackOptions(
            find_project_dir(project_dir) if project_dir else None,
            host,
            prefect_port,
            mlflow_port,
            redeploy,
            serving_port=serving_port,
            serving_model=serve_model,
        )
        defaults = StackOptions(
            find_project_dir(None),
            settings.stack_host,
            settings.prefect_port,
            settings.mlflow_port,
            serving_port=settings.serving_port,
            serving_model=settings.serving_model,
        )
        state = bring_up(settings.home_dir, asked, defaults, say=typer.echo)
    except MlopsError as error:
        _fail(error)
    _print_stack_urls(state)


def _print_stack_urls(state: Any) -> None:
    typer.secho("\nThe stack is up.", fg=typer.colors.GREEN, bold=True)
    typer.echo(f"  Prefect UI : {state.prefect_url}   (flow runs, deployments, work pools)")
    typer.echo(f"  MLflow UI  : {state.mlflow_url}   (runs, metrics, plots, the model registry)")
    typer.echo(
        f"  Serving    : {state.serving_url}/invocations   ({state.serving_model}, champion)"
    )
    typer.echo("  Trigger    : mlops trigger [--config configs/<use case>.yaml]")
    typer.echo("  Traffic    : mlops simulate-traffic [--drift]   (drift monitor -> retraining)")
    typer.echo("  Status     : mlops status")
    typer.echo("  Stop       : mlops down")


@app.command()
def status(
    urls: Annotated[bool, typer.Option("--urls", help="Print only where to open the UIs.")] = False,
) -> None:
    """Show the local stack: each component's pid, health, restarts and URL, and each schedule.

    For every scheduled deployment: its schedules, the next run they created and the last one
    they started, so you see that schedules fire. Exit 1 if a component is down or an active
    schedule has no run waiting (the scheduler is not creating runs).
    """
    from infra.stack import read_state, stack_status

    state = read_state(get_settings().home_dir)
    if state is None:
        typer.echo("No local stack is running here (start one with `mlops up`).")
        raise typer.Exit(1)
    if urls:
        typer.echo(f"Prefect UI: {state.prefect_url}   MLflow UI: {state.mlflow_url}")
        return
    rows = stack_status(state)
    typer.echo(f"Local stack in {state.home} (project {state.project_dir})")
    typer.echo(f"  {'component':<26} {'pid':>7}  {'status':<44} {'restarts':>8}  url")
    for row in rows:
        colour = typer.colors.GREEN if row.healthy else typer.colors.RED
        pid = str(row.pid) if row.pid else "-"
        typer.echo(f"  {row.name:<26} {pid:>7}  ", nl=False)
        typer.secho(f"{row.detail:<44}", fg=colour, nl=False)
        typer.echo(f" {row.restarts:>8}  {row.url or ''}")
    firing = _print_schedules(state)
    if not all(row.healthy for row in rows):
        typer.echo("Some components are down: the supervisor restarts them, or `mlops up` does.")
        raise typer.Exit(1)
    if not firing:
        raise typer.Exit(1)


def _print_schedules(state: Any) -> bool:
    """Each scheduled deployment with its next and last scheduled run; False if one is stuck."""
    import httpx
    from prefect.client.orchestration import get_client

    from infra.schedules import read_schedules
    from infra.stack import http_ok, prefect_api

    if not http_ok(f"{state.prefect_api_url}/health"):
        typer.echo("Schedules: not shown, the Prefect server is not answering.")
        return True
    try:
        with prefect_api(state), get_client(sync_client=True) as client:
            deployments = read_schedules(client)
    except httpx.HTTPError as error:  # the server went away between the two calls
        typer.echo(f"Schedules: not shown, the Prefect server failed to answer: {error}")
        return True
    typer.echo("Schedules (times in UTC):")
    for found in deployments:
        typer.echo(f"  {found.deployment:<42} {'; '.join(found.schedules)}")
        if found.firing:
            late = found.next_run is not None and found.next_run.state == "Late"
            typer.secho(
                f"      next  {_scheduled_run_text(found.next_run)}"
                + ("  (past due: no worker took it)" if late else ""),
                fg="red" if late else None,
            )
        else:
            typer.secho("      next  none: the scheduler is not creating runs", fg="red")
        typer.echo(f"      last  {_scheduled_run_text(found.last_run)}")
    stuck = [found.deployment for found in deployments if not found.firing]
    if stuck:
        log = Path(state.home) / "stack" / "logs" / "prefect-server.log"
        typer.echo(f"No run scheduled for {', '.join(stuck)}: read {log}.")
    return not stuck


def _scheduled_run_text(run: Any) -> str:
    if run is None:
        return "none yet"
    return f"{run.due:%Y-%m-%d %H:%M:%S}  {run.state:<10} {run.name}"


@app.command()
def down() -> None:
    """Stop everything `mlops up` started here (by recorded pid; safe to run twice).

    The supervisor first, so that it restarts nothing; then the workers; then the servers.
    """
    from infra.stack import bring_down

    bring_down(get_settings().home_dir, say=typer.echo)


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
        _fail(
            EnvironmentFailure(
                "No Prefect server to trigger on: start the local stack with `mlops up`, or "
                "set PREFECT_API_URL to a server where the project is deployed."
            )
        )
    parameters: dict[str, Any] = {}
    try:
        if config is not None:
            parsed = load_config(config)
            parameters["config"] = _with_absolute_source(parsed).model_dump(mode="json")
        from infra.deployments import trigger as trigger_deployment

        flow_run = trigger_deployment(deployment, parameters)
    except MlopsError as error:
        _fail(error)
    ui = os.environ["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")
    typer.echo(f"Triggered {deployment}: flow run '{flow_run.name}'")
    typer.echo(f"  {ui}/runs/flow-run/{flow_run.id}")
    if not wait:
        return
    _follow_pipeline(flow_run.id, timeout)


def _with_absolute_source(config: PipelineConfig) -> PipelineConfig:
    """A relative local data path made absolute, so a worker in another directory finds it."""
    source = config.data.source
    if "://" in source or Path(source).is_absolute():
        return config
    data = config.data.model_copy(update={"source": str(Path(source).resolve())})
    return config.model_copy(update={"data": data})


def _follow_pipeline(flow_run_id: Any, timeout: float | None) -> None:
    from infra.deployments import follow

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
        from flows.retrain import PipelineResult

        result = PipelineResult.model_validate(state.result(raise_on_failure=False))
    except MlopsError as error:
        _fail(error)
    except Exception as error:  # not bad input: a crash, a lost server (exit 1)
        _fail(EnvironmentFailure(f"The pipeline ended {state.name}: {error}"))
    _print_summary(result, time.perf_counter() - started)
    _exit_for(result.decision)


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
        _fail(error)
    if as_json:
        typer.echo(allocation.model_dump_json(indent=2))
        return
    from infra.allocator.report import allocation_markdown

    typer.echo(allocation_markdown(allocation))


def _recommend_use_case(config: Path | None, data: str | None, target: str | None) -> Any:
    pipeline_config = _config_from_options(config, data, target)
    preflight(pipeline_config)
    from tasks.allocation import recommend_for_dataset
    from tasks.preprocessing import fingerprint_source, preprocess_dataset

    dataset = preprocess_dataset(
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

    from infra.allocator.planner import (
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


@app.command()
def serve(
    model: Annotated[
        str,
        typer.Argument(help="NAME (its champion), NAME@alias, NAME/version or a models:/ URI."),
    ],
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 5001).")] = None,
    wait_for_model: Annotated[
        bool,
        typer.Option(
            help="Start even if MODEL has no such version yet: answer 503 until a reload "
            "(or the alias poll) finds it."
        ),
    ] = False,
) -> None:
    """Serve a registered model over MLflow's scoring protocol (POST /invocations).

    Also answers /ping, /health, /version and /metrics (Prometheus). Clients written for
    `mlflow models serve` work unchanged. A version is first loaded and checked in a child
    process (a damaged model file cannot crash the server); when the alias moves, the new
    version is checked that way, loaded beside the old one and swapped in without downtime: on
    POST /admin/reload (Bearer MLOPS_SERVING_ADMIN_TOKEN) or every MLOPS_SERVING_POLL_S
    seconds. Scored requests go to the inference log (MLOPS_INFERENCE_LOG: Parquet under the
    artifact store by default, `sql`, or `off`), which the drift monitor reads. Ctrl-C stops it.
    """
    import uvicorn
    from mlflow.tracking import MlflowClient

    from model_registry.registry import parse_reference
    from serving.app import ServingLimits, ServingState, build_app
    from serving.inference_log import build_inference_log
    from serving.loader import load_served_model
    from serving.swap import ModelSwapper

    settings = get_settings()
    uri = settings.resolved_tracking_uri
    check = settings.model_check

    def client() -> MlflowClient:
        return MlflowClient(uri, registry_uri=uri)

    def load(registry: MlflowClient, reference: str):
        return load_served_model(registry, reference, uri, check)

    try:
        parse_reference(model)  # a path or a pickle is refused even with --wait-for-model
        log = build_inference_log(settings)
    except ValueError as error:
        _fail(ConfigError(str(error)))
    except MlopsError as error:
        _fail(error)
    limits = ServingLimits(
        max_body_bytes=settings.serving_max_body_bytes,
        max_in_flight=settings.serving_max_in_flight,
        body_timeout_s=settings.serving_body_timeout_s,
        max_body_memory_bytes=settings.serving_max_body_memory_bytes,
        latency_budget_ms=settings.serving_latency_budget_ms,
        admin_token=settings.serving_admin_token,
        poll_s=settings.serving_poll_s,
        log_flush_s=settings.inference_log_flush_s,
    )
    state = ServingState(None, limits, log=log, reference=model)
    swapper = ModelSwapper(state, model, client, load)
    try:
        swapper.load_first()  # sets /health's last_reload_error when it fails
    except MlopsError as error:
        if not wait_for_model:
            _fail(error)
        typer.echo(f"Waiting for {model}: {error}")
    served = state.model
    bind_host, bind_port = host or settings.serving_host, port or settings.serving_port
    what = f"{served.name} version {served.version}" if served else f"{model} (once one loads)"
    typer.echo(f"Serving {what} on http://{bind_host}:{bind_port}/invocations")
    if log is not None:
        target = settings.inference_log_url if settings.inference_log == "sql" else None
        typer.echo(
            f"Inference log: {settings.inference_log_sample_rate:.0%} of requests to "
            f"{target or settings.inference_log_root}"
        )
    uvicorn.run(
        build_app(state, swapper),
        host=bind_host,
        port=bind_port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,  # an idle keep-alive connection is closed after 5 s
        # a stop waits this long for requests in flight (slow bodies time out later), then
        # writes the inference log out
        timeout_graceful_shutdown=10,
        # No limit_concurrency: it counts idle connections too, so a few hundred idle or slow
        # clients would get every request a plain-text 503; the app sheds on event-loop lag
        # and bounds body memory itself, and answers JSON.
    )


# ---------------------------------------------------------------- monitoring


@app.command()
def monitor(
    config: Annotated[
        Path, typer.Option("--config", "-c", help="Use-case YAML whose model is watched.")
    ] = Path("configs/fraud_detection.yaml"),
) -> None:
    """Run the drift monitor once, here: recent traffic vs the champion's training data.

    Reads the inference log of the last `monitoring.window_hours`, compares each feature (PSI,
    KS) and the predictions with the champion's training data, writes the report to MLflow and
    Prefect, and emits `mlops.model.drift-detected` when thresholds are crossed (with the local
    stack running, that starts the retraining pipeline). The stack's `drift-monitor` deployment
    does the same every 30 minutes.
    """
    from flows.monitor import drift_monitor_flow

    try:
        parsed = load_config(config)
        report = drift_monitor_flow(_with_absolute_source(parsed))
    except MlopsError as error:
        _fail(error)
    _print_drift(report)


def _print_drift(report: Any) -> None:
    colour = {"drift": typer.colors.RED, "degraded": typer.colors.RED}.get(
        report.status, typer.colors.GREEN
    )
    typer.secho(f"\nDrift monitor: {report.status}", fg=colour, bold=True)
    typer.echo(f"  {report.reason}")
    typer.echo(f"  window      : {report.window_start} .. {report.window_end}, {report.rows} rows")
    for drift in report.features[:10]:
        ks = f", KS {drift.ks_statistic:.3f}" if drift.ks_statistic is not None else ""
        mark = "DRIFT" if drift.drifted else "ok   "
        typer.echo(f"  {mark} {drift.column:<28} PSI {drift.psi:.3f}{ks}")
    if report.prediction is not None:
        typer.echo(f"  predictions : PSI {report.prediction.psi:.3f}")
    if report.performance is not None:
        typer.echo(f"  labels      : {report.performance.detail}")
    for line in report.skipped_files:
        typer.secho(f"  skipped     : {line}", fg=typer.colors.YELLOW)
    if report.event:
        typer.echo(f"  event       : {report.event} emitted")
    elif report.event_note:
        typer.echo(f"  event       : {report.event_note}")
    if report.mlflow_run_id:
        typer.echo(
            f"  report      : MLflow run {report.mlflow_run_id} (drift_report.md, drift/*.png)"
        )


@app.command("simulate-traffic")
def simulate_traffic(
    drift: Annotated[
        bool, typer.Option("--drift", help="Shift every input away from the training data.")
    ] = False,
    requests: Annotated[int, typer.Option(min=1, help="Requests to send.")] = 1000,
    batch_rows: Annotated[int, typer.Option(min=1, help="Rows per request.")] = 1,
    model: Annotated[
        str | None,
        typer.Option(help="Registered model [default: the stack's, MLOPS_SERVING_MODEL]."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Serving instance [default: the local stack's].")
    ] = None,
    labels: Annotated[
        bool, typer.Option(help="Write the rows' true outcomes as delayed labels (feedback file).")
    ] = True,
    run_monitor: Annotated[
        bool,
        typer.Option(
            "--monitor/--no-monitor",
            help="Then run the stack's drift-monitor deployment and follow what it triggers.",
        ),
    ] = True,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="Use case for the monitor [default: the deployment's]."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the row sampling and the drift.")] = 0,
    timeout: Annotated[float, typer.Option(help="Stop following after this many seconds.")] = 900,
) -> None:
    """Send generated traffic to the serving instance, optionally drifted, and watch the loop close.

    Rows come from the champion's held-out test split; `--drift` shifts every numeric input by
    one standard deviation and skews every categorical one. With the local stack running it
    then writes the inference log out, runs the `drift-monitor` deployment and, when that
    detects drift, follows the retraining pipeline run its event triggered: gated, deployed and
    hot-swapped into the serving instance. All of it shows in the Prefect and MLflow UIs.
    """
    from infra.stack import read_state

    settings = get_settings()
    state = read_state(settings.home_dir)
    target_url = url or (
        state.serving_url if state else f"http://127.0.0.1:{settings.serving_port}"
    )
    token = settings.serving_admin_token or (state.serving_token if state else None)
    model_name = model or (state.serving_model if state else settings.serving_model)
    try:
        sent = _send_simulated_traffic(model_name, target_url, requests, batch_rows, drift, seed)
    except (MlopsError, OSError) as error:
        _fail(error if isinstance(error, MlopsError) else MlopsError(f"{target_url}: {error}"))
    if labels and sent.request_ids:
        where = _write_feedback(settings, model_name, sent)
        typer.echo(f"Delayed labels of {len(sent.request_ids)} requests: {where}")
    _flush_inference_log(target_url, token, settings.inference_log_flush_s)
    if not run_monitor:
        return
    if not os.environ.get("PREFECT_API_URL"):
        typer.echo("No Prefect server: run the monitor here with `mlops monitor`.")
        return
    _monitor_and_follow(config, timeout)


def _send_simulated_traffic(
    model: str, url: str, requests: int, batch_rows: int, drift: bool, seed: int
) -> Any:
    from mlflow.tracking import MlflowClient

    from mlops.traffic import drift_rows, sample_rows, send_traffic
    from tasks.monitoring import champion_dataset
    from tasks.preprocessing import read_split

    uri = get_settings().resolved_tracking_uri
    found = champion_dataset(MlflowClient(uri, registry_uri=uri), model)  # MlopsError if gone
    if found is None:
        raise MlopsError(f"{model} has no champion yet: run the pipeline first (`mlops trigger`).")
    _, dataset = found
    rows, outcomes = sample_rows(
        read_split(dataset, "test"),
        dataset.feature_spec,
        dataset.target,
        requests * batch_rows,
        seed,
    )
    if drift:
        rows = drift_rows(rows, dataset.feature_spec, seed)
    kind = "drifted" if drift else "undrifted"
    typer.echo(f"Sending {requests} {kind} requests ({batch_rows} row(s) each) to {url} ...")
    with typer.progressbar(length=len(rows), label="  requests") as bar:
        done = [0]

        def progress(count: int) -> None:
            bar.update(count - done[0])
            done[0] = count

        sent = send_traffic(url, rows, outcomes, batch_rows, progress)
    rate = sent.ok / sent.seconds if sent.seconds else 0.0
    versions = ", ".join(f"version {v}: {n}" for v, n in sent.versions.items())
    typer.echo(f"  {sent.ok} answered in {sent.seconds:.1f} s ({rate:.0f} req/s; {versions})")
    if sent.errors:
        typer.secho(f"  errors by status: {sent.errors}", fg=typer.colors.YELLOW)
    return sent


def _write_feedback(settings: Any, model: str, sent: Any) -> str:
    import uuid

    import fsspec

    from mlops.traffic import feedback_frame

    folder = f"{settings.feedback_root}/{model}"
    fs, path = fsspec.core.url_to_fs(folder)
    fs.makedirs(path, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}.csv"
    with fs.open(f"{path}/{name}", "w") as handle:
        feedback_frame(sent).to_csv(handle, index=False)
    return f"{folder}/{name}"


def _flush_inference_log(url: str, token: str | None, flush_s: float) -> None:
    import httpx

    if token:
        reply = httpx.post(
            f"{url}/admin/flush-log", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        if reply.status_code == 200:
            body = reply.json()
            typer.echo(f"Inference log written: {body['written_rows']} rows in all so far")
            return
        typer.secho(f"  flush-log answered {reply.status_code}: {reply.text[:200]}", fg="yellow")
    typer.echo(f"Waiting {flush_s + 2:.0f} s for the server to write its inference log ...")
    time.sleep(flush_s + 2)


def _monitor_and_follow(config: Path | None, timeout: float) -> None:
    import datetime as dt

    from infra.deployments import follow, wait_for_triggered_run
    from infra.deployments import trigger as trigger_deployment
    from tasks.monitoring import DriftReport

    parameters = {}
    if config is not None:
        parameters["config"] = _with_absolute_source(load_config(config)).model_dump(mode="json")
    try:
        run = trigger_deployment("drift-monitor/drift-monitor", parameters)
    except MlopsError as error:
        _fail(error)
    started = dt.datetime.now(dt.UTC)
    typer.echo(f"Triggered drift-monitor: flow run '{run.name}'")
    finished = follow(run.id, lambda event: None, timeout_s=300)
    if finished.state is None or not finished.state.is_completed():
        _fail(
            MlopsError(
                f"The drift monitor ended {finished.state.name if finished.state else '?'}: "
                f"{finished.state.message if finished.state else ''}"
            )
        )
    report = DriftReport.model_validate(finished.state.result())
    _print_drift(report)
    if not report.event:
        return
    typer.echo("\nWaiting for the retraining pipeline the event triggers ...")
    pipeline = wait_for_triggered_run("retraining-pipeline/retraining-pipeline", started)
    if pipeline is None:
        _fail(MlopsError("No retraining-pipeline run started within 60 s of the event."))
    ui = os.environ["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")
    typer.echo(f"Triggered by {report.event}: flow run '{pipeline.name}'")
    typer.echo(f"  {ui}/runs/flow-run/{pipeline.id}")
    _follow_pipeline(pipeline.id, timeout)


@app.command("export")
def export_model(
    model: Annotated[
        str,
        typer.Argument(help="NAME (its champion), NAME@alias, NAME/version or a models:/ URI."),
    ],
    out: Annotated[Path, typer.Option(help="New folder to write the bundle to.")],
) -> None:
    """Write a registered model as a self-contained predictor bundle (no MLflow or Prefect).

    The bundle holds the native LightGBM model, its fitted feature transform, the feature code
    the version was validated with, and pinned requirements: `pip install OUT`, then
    `python -m <package> rows.csv`, or `from <package> import load` in Python.
    """
    from model_registry.export import export_bundle

    settings = get_settings()
    uri = settings.resolved_tracking_uri
    from mlflow.tracking import MlflowClient

    try:
        bundle = export_bundle(MlflowClient(uri, registry_uri=uri), model, out, uri)
    except MlopsError as error:
        _fail(error)
    typer.echo(f"Exported {bundle.model_name} version {bundle.version} to {bundle.path}")
    typer.echo(f"  package      : {bundle.package}")
    typer.echo(f"  requirements : {', '.join(bundle.requirements)}")
    typer.echo(f"  install      : pip install {bundle.path}")
    typer.echo(
        f"  predict      : python -m {bundle.package} rows.csv   (or rows.json, or - for stdin)"
    )


allocator_app = typer.Typer(
    help="The allocator's run history: list, export, import.", no_args_is_help=True
)
app.add_typer(allocator_app, name="allocator")


@allocator_app.command("history")
def allocator_history(
    use_case: Annotated[str | None, typer.Option(help="Only this use case's runs.")] = None,
    last: Annotated[int, typer.Option(help="Show the most recent N runs.")] = 20,
) -> None:
    """List recorded training runs: job, cluster, outcome, predicted vs actual."""
    from infra.allocator.planner import open_history

    store = open_history(get_settings())
    runs = store.runs(use_case)
    store.close()
    typer.echo(f"{len(runs)} recorded run(s) in {get_settings().resolved_history_url}")
    if not runs:
        return
    typer.echo(
        f"{'recorded (UTC)':<17} {'use case':<20} {'rows':>9} {'feat':>4} {'shape':<18} "
        f"{'status':<13} {'time s':>7} {'pred s':>7} {'peak MiB':>8} {'pred MiB':>8}"
    )
    for run in runs[-last:]:
        predicted_time = f"{run.predicted_wall_time_s:.1f}" if run.predicted_wall_time_s else "-"
        predicted_peak = (
            f"{run.predicted_peak_memory_bytes / 2**20:.0f}"
            if run.predicted_peak_memory_bytes
            else "-"
        )
        peak = f"{run.peak_memory_bytes / 2**20:.0f}" if run.peak_memory_bytes else "-"
        typer.echo(
            f"{run.recorded_at:%Y-%m-%d %H:%M} {run.use_case[:20]:<20} "
            f"{f'{run.n_rows:,}' if run.n_rows else '-':>9} {run.n_features or '-':>4} "
            f"{run.shape.label():<18} {run.status:<13} "
            f"{run.total_time_s:>7.1f} {predicted_time:>7} {peak:>8} {predicted_peak:>8}"
        )


@allocator_app.command("export")
def allocator_export(
    file: Annotated[Path, typer.Argument(help="Destination .csv or .parquet file.")],
) -> None:
    """Write the whole run history to CSV or Parquet (columns: docs/allocator.md)."""
    from infra.allocator.planner import open_history
    from infra.allocator.run_logs import export_history

    try:
        store = open_history(get_settings())
        count = export_history(store, file)
        store.close()
    except MlopsError as error:
        _fail(error)
    typer.echo(f"Exported {count} run(s) to {file}")


@allocator_app.command("import")
def allocator_import(
    file: Annotated[
        Path, typer.Argument(help="A .csv or .parquet run log: an export, or a cluster's own.")
    ],
) -> None:
    """Add runs from another environment or a cluster's own log; a bad file adds nothing.

    Required columns: use_case (the job), workers (nodes), status, wall_time_s. The others
    are optional (empty = unknown); machine_type fills threads and memory from the catalogue
    (MLOPS_ALLOCATOR_MACHINES extends it); columns that are not history columns are kept as
    the job's params. docs/allocator.md maps a foreign log, with a worked example.
    """
    from infra.allocator.planner import open_catalogue, open_history
    from infra.allocator.run_logs import import_history

    settings = get_settings()
    try:
        catalogue = open_catalogue(settings)
    except MlopsError as error:
        _fail(error)
    store = open_history(settings)
    try:
        count = import_history(store, file, catalogue)
    except MlopsError as error:
        _fail(error)
    finally:
        store.close()
    typer.echo(f"Imported {count} run(s) from {file}")


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="Use-case YAML to validate.")],
) -> None:
    """Validate a config file without running anything."""
    try:
        parsed = load_config(config)
    except MlopsError as error:
        _fail(error)
    typer.echo(f"{config}: OK (use case '{parsed.name}', model '{parsed.model.name}')")


if __name__ == "__main__":
    app()
