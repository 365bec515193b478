"""Monitoring commands: the drift ``monitor`` once, ``simulate-traffic`` to close the loop."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_mlops.cli._utilities import fail, with_absolute_source
from prefect_mlops.cli.pipeline import follow_pipeline
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.config import load_config
from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.settings import get_settings


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
    from prefect_mlops.flows.monitor import drift_monitor_flow

    try:
        parsed = load_config(config)
        report = drift_monitor_flow(with_absolute_source(parsed))
    except MlopsError as error:
        fail(error)
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
    from prefect_mlops.infra.stack.state import read_state
    from prefect_mlops.mlops.feedback import write_feedback
    from prefect_mlops.mlops.storage import artifact_store
    from prefect_mlops.serving.traffic import feedback_frame

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
        fail(error if isinstance(error, MlopsError) else MlopsError(f"{target_url}: {error}"))
    if labels and sent.request_ids:
        folder = artifact_store(settings).feedback_folder(model_name)
        where = write_feedback(folder, feedback_frame(sent))
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

    from prefect_mlops.mlops.dataset import read_split
    from prefect_mlops.serving.traffic import drift_rows, sample_rows, send_traffic
    from prefect_mlops.tasks.monitoring import champion_dataset

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


def _flush_inference_log(url: str, token: str | None, flush_s: float) -> None:
    from prefect_mlops.serving.client import request_log_flush

    if token:
        answer = request_log_flush(url, token)
        if answer.status_code == 200:
            typer.echo(f"Inference log written: {answer.written_rows} rows in all so far")
            return
        typer.secho(f"  flush-log answered {answer.status_code}: {answer.text[:200]}", fg="yellow")
    typer.echo(f"Waiting {flush_s + 2:.0f} s for the server to write its inference log ...")
    time.sleep(flush_s + 2)


def _monitor_and_follow(config: Path | None, timeout: float) -> None:
    import datetime as dt

    from prefect_mlops.infra.deployments import follow, wait_for_triggered_run
    from prefect_mlops.infra.deployments import trigger as trigger_deployment
    from prefect_mlops.mlops.drift_report import DriftReport

    parameters = {}
    if config is not None:
        parameters["config"] = with_absolute_source(load_config(config)).model_dump(mode="json")
    try:
        run = trigger_deployment("drift-monitor/drift-monitor", parameters)
    except MlopsError as error:
        fail(error)
    started = dt.datetime.now(dt.UTC)
    typer.echo(f"Triggered drift-monitor: flow run '{run.name}'")
    finished = follow(run.id, lambda event: None, timeout_s=300)
    if finished.state is None or not finished.state.is_completed():
        fail(
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
        fail(MlopsError("No retraining-pipeline run started within 60 s of the event."))
    ui = os.environ["PREFECT_API_URL"].removesuffix("/").removesuffix("/api")
    typer.echo(f"Triggered by {report.event}: flow run '{pipeline.name}'")
    typer.echo(f"  {ui}/runs/flow-run/{pipeline.id}")
    follow_pipeline(pipeline.id, timeout)
