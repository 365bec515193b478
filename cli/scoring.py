"""Batch scoring command: ``score`` a file or folder with a registered model version."""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_mlops.cli._utilities import exit_status_help, fail, usage_error
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.errors import MlopsError


@app.command(epilog=exit_status_help())
def score(
    model: Annotated[str, typer.Argument(help="Registered model name (its champion by default).")],
    data: Annotated[
        str, typer.Option(help="CSV or Parquet file, or a folder of them; path or fsspec URL.")
    ],
    out: Annotated[
        str | None,
        typer.Option(
            help="New folder for the predictions (default: predictions/MODEL/VERSION/BATCH/ in "
            "the artifact store)."
        ),
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Score with this alias.")] = None,
    version: Annotated[str | None, typer.Option(help="Score with this version.")] = None,
    keep: Annotated[
        list[str] | None,
        typer.Option(help="Input column to copy into the output, e.g. an id (repeatable)."),
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Rows read and scored at a time.")] = 100_000,
) -> None:
    """Score a file or folder of rows with the champion (or --alias / --version), in chunks.

    Writes one `part-*.parquet` per input file: the --keep columns, `request_id`, `row`,
    `model`, `version` and the prediction columns, as `mlops serve` answers them. The chunks
    are recorded in the inference log, so the drift monitor sees batch traffic too. A file
    with a missing, unexpected or unreadable column stops the run and nothing is written.
    """
    from prefect_mlops.api import score as score_batch

    if alias and version:
        usage_error("Pass --alias or --version, not both.")
    try:
        result = score_batch(model, data, out, alias, version, keep, chunk_rows)
    except MlopsError as error:
        fail(error)
    typer.echo(
        f"Scored {result.rows:,} rows of {len(result.inputs)} file(s) with {result.model} "
        f"version {result.version} in {result.seconds:.1f}s (batch {result.batch_id})"
    )
    typer.echo(f"  predictions   : {result.output}")
    logged = f"{result.logged_rows:,} rows -> {result.log}" if result.log else "off"
    typer.echo(f"  inference log : {logged}")
