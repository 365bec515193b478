"""Data commands: ``generate`` a synthetic dataset, ``check-config`` a use-case YAML."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from prefect_mlops.cli._utilities import fail
from prefect_mlops.cli.root import app
from prefect_mlops.mlops.config import load_config
from prefect_mlops.mlops.errors import MlopsError


class Generator(StrEnum):
    fraud = "fraud"
    car_dealership = "car_dealership"


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
    from prefect_mlops.mlops.synthetic import write_dataset

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


@app.command("check-config")
def check_config(
    config: Annotated[Path, typer.Argument(help="Use-case YAML to validate.")],
) -> None:
    """Validate a config file without running anything."""
    try:
        parsed = load_config(config)
    except MlopsError as error:
        fail(error)
    typer.echo(f"{config}: OK (use case '{parsed.name}', model '{parsed.model.name}')")
