"""The `mlops` command line: every group's commands on one root app, listed as they always were."""

from __future__ import annotations

import typer
import typer.main
from typer.core import TyperGroup

from prefect_mlops.cli.root import HELP_ORDER, app


def test_every_command_is_registered_and_listed_in_help_order():
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    assert group.list_commands(typer.Context(group)) == list(HELP_ORDER)
    allocator = group.get_command(typer.Context(group), "allocator")
    assert isinstance(allocator, TyperGroup)
    assert allocator.list_commands(typer.Context(allocator)) == ["history", "export", "import"]
