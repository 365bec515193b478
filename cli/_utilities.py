"""What the command modules share: how an error ends a command, the exit codes' help, paths a
worker can find."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from typer._click.exceptions import UsageError  # typer vendors click and does not re-export it
from typer._click.globals import get_current_context

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.errors import ExitCode

EXIT_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.ENVIRONMENT: "the environment failed: storage, a server, a worker or a process the "
    "command needs (also any unexpected error)",
    ExitCode.BAD_INPUT: "bad input: a config, data file, model or setting you gave is wrong or "
    "missing; the message names it",
    ExitCode.REJECTED: "the model gate rejected the candidate (it stays `challenger`)",
    ExitCode.ROLLED_BACK: "the deploy stage's smoke test failed and `champion` was rolled back",
    ExitCode.USAGE: "usage error: an unknown option, a missing argument, a value of the wrong "
    "type, options that exclude each other; nothing was run",
}
"""What each exit status means, as every command's help lists it."""
COMMON_EXITS = (ExitCode.OK, ExitCode.ENVIRONMENT, ExitCode.BAD_INPUT, ExitCode.USAGE)
"""The statuses every command can end with."""
PIPELINE_EXITS = tuple(ExitCode)
"""A command that runs or follows the pipeline ends with a verdict too (3, 4)."""


def exit_status_help(codes: tuple[ExitCode, ...] = COMMON_EXITS, **meaning: str) -> str:
    """The epilog of a command's ``--help``: each exit status it can end with and its meaning.

    Args:
        codes: The statuses the command can end with.
        meaning: What a status means for this command, by lower-case name (``ok="..."``).
    """
    meanings = EXIT_MEANINGS | {ExitCode[name.upper()]: text for name, text in meaning.items()}
    return "**Exit status**\n\n" + "\n".join(f"- {int(code)}: {meanings[code]}" for code in codes)


@contextmanager
def usage_exit_code() -> Iterator[None]:
    """Make a usage error raised in the block (click's or a command's) exit with 64, not 2.

    Click ends every usage error with 2, which this project's commands give to bad input.
    """
    try:
        yield
    except UsageError as error:
        error.exit_code = ExitCode.USAGE
        raise


def usage_error(message: str) -> NoReturn:
    """End the command as click ends a usage error (its usage line, exit 64)."""
    raise UsageError(message, get_current_context(silent=True))


def fail(error: Exception) -> NoReturn:
    """Print the error as one paragraph and exit with its code (2 bad input, 1 environment)."""
    typer.secho(f"\nerror: {error}", fg=typer.colors.RED, err=True)
    raise typer.Exit(getattr(error, "exit_code", ExitCode.ENVIRONMENT))


def with_absolute_source(config: PipelineConfig) -> PipelineConfig:
    """A relative local data path made absolute, so a worker in another directory finds it."""
    source = config.data.source
    if "://" in source or Path(source).is_absolute():
        return config
    data = config.data.model_copy(update={"source": str(Path(source).resolve())})
    return config.model_copy(update={"data": data})
