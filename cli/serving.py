"""Serving commands: ``serve`` a registered model, ``export`` it as a predictor bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefect_mlops.cli._utilities import exit_status_help, fail
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.settings import get_settings


@app.command(epilog=exit_status_help())
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

    Also answers /ping, /health, /version and /metrics (Prometheus), and writes a JSON
    access-log line per request to stderr (MLOPS_SERVING_ACCESS_LOG_LEVEL). Clients written for
    `mlflow models serve` work unchanged. A version is first loaded and checked in a child
    process (a damaged model file cannot crash the server); when the alias moves, the new
    version is checked that way, loaded beside the old one and swapped in without downtime: on
    POST /admin/reload (Bearer MLOPS_SERVING_ADMIN_TOKEN) or every MLOPS_SERVING_POLL_S
    seconds. Scored requests go to the inference log (MLOPS_INFERENCE_LOG: Parquet under the
    artifact store by default, `sql`, or `off`), which the drift monitor reads. Ctrl-C stops it.
    """
    from prefect_mlops.api import serve as serve_model

    try:
        serve_model(model, host, port, wait_for_model, say=typer.echo)
    except MlopsError as error:
        fail(error)


@app.command("export", epilog=exit_status_help())
def export_model(
    model: Annotated[
        str,
        typer.Argument(help="NAME (its champion), NAME@alias, NAME/version or a models:/ URI."),
    ],
    out: Annotated[Path, typer.Option(help="New folder to write the bundle to.")],
) -> None:
    """Write a registered model as a self-contained predictor bundle (no MLflow or Prefect).

    The bundle holds the model in its family's native format, its fitted feature transform, the
    feature and predictor code the version was validated with, and pinned requirements: `pip install OUT`, then
    `python -m <package> rows.csv`, or `from <package> import load` in Python.
    """
    from mlflow.tracking import MlflowClient

    from prefect_mlops.model_registry.export import export_bundle

    settings = get_settings()
    uri = settings.resolved_tracking_uri
    try:
        bundle = export_bundle(MlflowClient(uri, registry_uri=uri), model, out, uri)
    except MlopsError as error:
        fail(error)
    typer.echo(f"Exported {bundle.model_name} version {bundle.version} to {bundle.path}")
    typer.echo(f"  package      : {bundle.package}")
    typer.echo(f"  requirements : {', '.join(bundle.requirements)}")
    typer.echo(f"  install      : pip install {bundle.path}")
    typer.echo(
        f"  predict      : python -m {bundle.package} rows.csv   (or rows.json, or - for stdin)"
    )
