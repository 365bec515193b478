"""The root ``mlops`` app every command group registers on, and its start-up callback.

The command modules (``cli/pipeline.py``, ``cli/stack.py`` ...) add their commands to ``app``
when ``cli`` is imported; ``mlops --help`` lists them in ``HELP_ORDER``.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from prefect_mlops.infra.environment import configure_environment
from prefect_mlops.mlops.settings import get_settings

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
    "monitor",
    "simulate-traffic",
    "export",
    "check-config",
    "allocator",
)
"""The order ``mlops --help`` lists the commands in; one not named here comes last."""


class CommandsInHelpOrder(TyperGroup):
    """The root group: lists its commands in ``HELP_ORDER``, whichever module registered them."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        """The command names, in ``HELP_ORDER``."""
        names = super().list_commands(ctx)
        return sorted(names, key=lambda n: HELP_ORDER.index(n) if n in HELP_ORDER else len(names))


app = typer.Typer(
    cls=CommandsInHelpOrder,
    help="Retraining pipeline for tabular models: Prefect flows, LightGBM on Dask, MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # docstring paragraphs re-flow to the terminal width
)


@app.callback()
def _configure() -> None:
    """Runs before every command: local Prefect/Dask environment, before either is imported."""
    configure_environment(get_settings())
