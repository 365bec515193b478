"""The root ``mlops`` app every command group registers on, and its start-up callback.

The command modules (``cli/pipeline.py``, ``cli/stack.py`` ...) add their commands to ``app``
when ``cli`` is imported; ``mlops --help`` lists them in ``HELP_ORDER``. The root also owns what
every command shares: the exit status of a usage error (64), ``--version`` and shell completion.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from prefect_mlops.cli._utilities import PIPELINE_EXITS, exit_status_help, fail, usage_exit_code
from prefect_mlops.infra.environment import configure_environment
from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.settings import get_settings, settings_problems

HELP_ORDER = (
    "run",
    "generate",
    "ui",
    "mlflow-server",
    "up",
    "status",
    "down",
    "trigger",
    "recommend",
    "serve",
    "score",
    "monitor",
    "simulate-traffic",
    "export",
    "check-config",
    "allocator",
)
"""The order ``mlops --help`` lists the commands in; one not named here comes last."""


DISTRIBUTION = "prefect-mlops"
COMPONENTS = (
    ("Prefect", ("prefect",)),
    ("MLflow", ("mlflow", "mlflow-skinny")),
    ("Dask", ("dask",)),
    ("LightGBM", ("lightgbm",)),
    ("XGBoost", ("xgboost", "xgboost-cpu")),
)
"""The components ``mlops --version`` reports: a name and the distributions that provide it."""


class CommandsInHelpOrder(TyperGroup):
    """The root group: lists its commands in ``HELP_ORDER``, whichever module registered them,
    and ends a usage error of any command with exit status 64."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """The command names, in ``HELP_ORDER``."""
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(names))

    def make_context(
        self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any
    ) -> typer.Context:
        """Parse the root's own options (a usage error there exits 64)."""
        with usage_exit_code():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: typer.Context) -> Any:
        """Parse and run the command (a usage error there exits 64)."""
        with usage_exit_code():
            return super().invoke(ctx)


def distribution_version(names: tuple[str, ...]) -> str | None:
    """The installed version of the first of ``names`` that is installed (no import)."""
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def version_text() -> str:
    """This package's version, then Python's and the key components' (read from metadata)."""
    own = distribution_version((DISTRIBUTION,)) or "not installed"
    parts = [f"Python {platform.python_version()}"]
    for label, names in COMPONENTS:
        parts.append(f"{label} {distribution_version(names) or 'not installed'}")
    return f"mlops ({DISTRIBUTION}) {own}\n" + ", ".join(parts)


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(version_text())
        raise typer.Exit()


app = typer.Typer(
    cls=CommandsInHelpOrder,
    help="Retraining pipeline for tabular models: Prefect flows, LightGBM on Dask, MLflow.\n\n"
    "Shell completion: `mlops --install-completion` (bash, zsh, fish; docs/cli.md).",
    epilog=exit_status_help(
        PIPELINE_EXITS, ok="done (`run`, `trigger`: the candidate became champion)"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs re-flow to the terminal width
)


@app.callback()
def _configure(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print the version of mlops, Python and the key components, and exit.",
        ),
    ] = False,
) -> None:
    """Runs before every command: local Prefect/Dask environment, before either is imported."""
    try:
        settings = get_settings()
    except ValidationError as error:  # a bad MLOPS_* variable: exit 2, naming it
        fail(ConfigError(settings_problems(error)))
    configure_environment(settings)
