"""The environment every `mlops` command starts in: the local stack's servers when one runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefect_mlops.infra.environment import (
    QUIET_ENVIRONMENT,
    configure_environment,
    use_local_stack,
)
from prefect_mlops.infra.stack.processes import start_process, stop_process
from prefect_mlops.infra.stack.state import MLFLOW_SERVER, PREFECT_SERVER, StackState, write_state
from prefect_mlops.mlops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def bare_env(monkeypatch):
    """No Prefect, MLflow or quiet-default variables of the test session."""
    for name in list(os.environ):
        if name.startswith(("PREFECT_", "MLFLOW_")) or name in QUIET_ENVIRONMENT:
            monkeypatch.delenv(name)
    monkeypatch.delenv("MPLCONFIGDIR", raising=False)


def running_stack(home: Path) -> StackState:
    """A recorded stack whose two servers are live processes (sleeps stand in for them)."""
    records = {
        name: start_process(name, ["sleep", "60"], {}, home, home / f"{name}.log", None)
        for name in (PREFECT_SERVER, MLFLOW_SERVER)
    }
    state = StackState(
        home=str(home),
        project_dir=str(ROOT),
        host="127.0.0.1",
        prefect_port=4399,
        mlflow_port=5099,
        processes=records,
    )
    write_state(state)
    return state


def test_without_a_stack_nothing_is_pointed_anywhere(tmp_path, bare_env):
    assert use_local_stack(Settings(home=tmp_path)) is False
    assert "PREFECT_API_URL" not in os.environ and "MLFLOW_TRACKING_URI" not in os.environ


def test_a_running_stack_gives_its_servers_and_the_users_own_variables_win(
    tmp_path, bare_env, monkeypatch
):
    state = running_stack(tmp_path)
    try:
        assert use_local_stack(Settings(home=tmp_path)) is True
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4399/api"
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5099"

        monkeypatch.setenv("PREFECT_API_URL", "http://elsewhere:4200/api")
        assert use_local_stack(Settings(home=tmp_path)) is True
        assert os.environ["PREFECT_API_URL"] == "http://elsewhere:4200/api"
    finally:
        for record in state.processes.values():
            stop_process(record, grace_seconds=2)
    assert use_local_stack(Settings(home=tmp_path)) is False  # servers gone: not used


def test_configure_environment_fills_in_a_local_prefect_home_and_quiet_defaults(
    tmp_path, bare_env, monkeypatch
):
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")  # the user's choice is kept
    configure_environment(Settings(home=tmp_path))
    assert os.environ["PREFECT_HOME"] == str(tmp_path / "prefect")
    assert (tmp_path / "prefect").is_dir()
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "DEBUG"
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_URL" not in os.environ  # no stack: Prefect's own ephemeral API


def test_settings_read_settings_and_import_nothing_of_infra():
    code = (
        "import sys, prefect_mlops.mlops.settings; "
        "print(sorted(m for m in sys.modules if m.startswith('prefect_mlops')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(
        ["prefect_mlops", "prefect_mlops.mlops", "prefect_mlops.mlops.settings"]
    )
