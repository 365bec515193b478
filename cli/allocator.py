"""The ``allocator`` command group: the allocator's run history (list, export, import)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefect_mlops.cli._utilities import fail
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.errors import MlopsError
from prefect_mlops.mlops.settings import get_settings

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
    from prefect_mlops.infra.allocator.planner import open_history

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
    from prefect_mlops.infra.allocator.planner import open_history
    from prefect_mlops.infra.allocator.run_logs import export_history

    try:
        store = open_history(get_settings())
        count = export_history(store, file)
        store.close()
    except MlopsError as error:
        fail(error)
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
    from prefect_mlops.infra.allocator.planner import open_catalogue, open_history
    from prefect_mlops.infra.allocator.run_logs import import_history

    settings = get_settings()
    try:
        catalogue = open_catalogue(settings)
    except MlopsError as error:
        fail(error)
    store = open_history(settings)
    try:
        count = import_history(store, file, catalogue)
    except MlopsError as error:
        fail(error)
    finally:
        store.close()
    typer.echo(f"Imported {count} run(s) from {file}")
