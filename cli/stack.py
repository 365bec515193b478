"""Local stack commands: ``up``, ``status``, ``down``; the MLflow UI and the MLflow server."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_mlops.cli._utilities import exit_status_help, fail
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.errors import ExitCode, MlopsError
from prefect_mlops.mlops.settings import get_settings


@app.command(epilog=exit_status_help())
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
    by the deploy stage; its inference log feeds the drift monitor. Also creates the work pools
    and deploys prefect.yaml (prefect deploy --all). State lives under .mlops/ (SQLite
    databases, artifacts; logs in .mlops/stack/logs). Running it again keeps what runs,
    restarts what died, and deploys again only if prefect.yaml or flows/ changed. Every port is
    checked before anything starts; if a component still fails to start, what this call
    started is stopped again (exit 1). Last, a supervisor starts: it restarts a server or
    worker that dies (`mlops status` counts the restarts) and rotates a log over
    MLOPS_STACK_LOG_MAX_BYTES (docs/operations.md). Stop it all with `mlops down`.
    """
    from prefect_mlops.infra.stack.project import find_project_dir
    from prefect_mlops.infra.stack.up import StackOptions, bring_up

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
        fail(error)
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


@app.command(
    epilog=exit_status_help(
        (ExitCode.OK, ExitCode.ENVIRONMENT, ExitCode.USAGE),
        ok="every component is healthy and every active schedule has a run waiting",
        environment="a component is down, an active schedule has no run waiting, or no stack "
        "runs here",
    )
)
def status(
    urls: Annotated[bool, typer.Option("--urls", help="Print only where to open the UIs.")] = False,
) -> None:
    """Show the local stack: each component's pid, health, restarts and URL, and each schedule.

    For every scheduled deployment: its schedules, the next run they created and the last one
    they started, so you see that schedules fire: one with no run waiting means the scheduler
    is not creating runs.
    """
    from prefect_mlops.infra.stack.state import read_state
    from prefect_mlops.infra.stack.status import stack_status

    state = read_state(get_settings().home_dir)
    if state is None:
        typer.echo("No local stack is running here (start one with `mlops up`).")
        raise typer.Exit(1)
    if urls:
        typer.echo(f"Prefect UI: {state.prefect_url}   MLflow UI: {state.mlflow_url}")
        return
    rows = stack_status(state)
    typer.echo(f"Local stack in {state.home} (project {state.project_dir})")
    typer.echo(f"  {'component':<30} {'pid':>7}  {'status':<44} {'restarts':>8}  url")
    for row in rows:
        colour = typer.colors.GREEN if row.healthy else typer.colors.RED
        pid = str(row.pid) if row.pid else "-"
        typer.echo(f"  {row.name:<30} {pid:>7}  ", nl=False)
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

    from prefect_mlops.infra.schedules import read_schedules
    from prefect_mlops.infra.stack.components import prefect_api
    from prefect_mlops.infra.stack.processes import http_ok

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


@app.command(
    epilog=exit_status_help(
        (ExitCode.OK, ExitCode.ENVIRONMENT, ExitCode.USAGE),
        ok="stopped, or nothing was running",
        environment="an unexpected error while stopping",
    )
)
def down() -> None:
    """Stop everything `mlops up` started here (by recorded pid; safe to run twice).

    The supervisor first, so that it restarts nothing; then the workers; then the fork server
    (with the flow runs it forked) and the servers.
    """
    from prefect_mlops.infra.stack.down import bring_down

    bring_down(get_settings().home_dir, say=typer.echo)


@app.command(
    epilog=exit_status_help(
        (ExitCode.OK, ExitCode.ENVIRONMENT, ExitCode.USAGE),
        environment="the MLflow UI failed (its own non-zero status is passed on)",
    )
)
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
    from prefect_mlops.infra.stack.processes import console_script

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


@app.command(
    "mlflow-server",
    epilog=exit_status_help(
        bad_input="an unsafe admin password or bad store settings; nothing was started"
    ),
)
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
    from prefect_mlops.infra.mlflow_server import mlflow_server_launch

    try:
        launch = mlflow_server_launch(get_settings(), host, port, workers)
    except MlopsError as error:
        fail(error)
    auth = "basic-auth app on" if launch.authenticated else "no authentication"
    typer.echo(f"MLflow server on http://{host}:{port} ({auth})", err=True)
    os.execvpe(launch.command[0], launch.command, os.environ | launch.env)
