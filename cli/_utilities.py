"""What the command modules share: how an error ends a command, paths a worker can find."""

from __future__ import annotations

from pathlib import Path

import typer

from prefect_mlops.mlops.config import PipelineConfig


def fail(error: Exception) -> None:
    """Print the error as one paragraph and exit with its code (2 bad input, 1 environment)."""
    typer.secho(f"\nerror: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(getattr(error, "exit_code", 1))


def with_absolute_source(config: PipelineConfig) -> PipelineConfig:
    """A relative local data path made absolute, so a worker in another directory finds it."""
    source = config.data.source
    if "://" in source or Path(source).is_absolute():
        return config
    data = config.data.model_copy(update={"source": str(Path(source).resolve())})
    return config.model_copy(update={"data": data})
