"""The real local stack (`mlops up`) on free loopback ports in a temp folder, stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from infra.stack import StackState, read_state
from tests.ports import free_port

PROJECT = Path(__file__).resolve().parents[2]
MLOPS = str(Path(sys.executable).parent / "mlops")


def stack_env(home: Path) -> dict[str, str]:
    """The environment a user's shell would have: only MLOPS_HOME set, nothing of the tests'."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {"MLOPS_HOME": str(home)}


def mlops_cli(home: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console script, run from the project root against the stack in ``home``."""
    return subprocess.run(
        [MLOPS, *args],
        cwd=PROJECT,
        env=stack_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def processes_of(home: Path) -> list[psutil.Process]:
    """Every live process started for the stack in ``home`` (found by its environment)."""
    found = []
    for process in psutil.process_iter():
        try:
            ours = process.environ().get("MLOPS_HOME") == str(home)
            if ours and process.pid != os.getpid() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def small_config(source: Path, **training: Any) -> dict[str, Any]:
    """The bundled fraud use case on a small file, with a quick training budget."""
    raw = yaml.safe_load((PROJECT / "configs" / "fraud_detection.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"]["synthetic"] = {"generator": "fraud", "rows": 20_000, "seed": 3}
    raw["training"].update({"n_estimators": 80, **training})
    # These tests are about orchestration: on 20k rows (about 50 positives in the test split)
    # two trainings on the same data differ by more than the bundled 1% regression tolerance
    # (distributed LightGBM is not bit-reproducible), so the gate's comparisons are loosened.
    raw["model_gate"].update(
        {"metric_floors": {"roc_auc": 0.6}, "max_regression": 0.5, "slices": []}
    )
    return raw


@pytest.fixture(scope="package")
def stack(tmp_path_factory) -> Iterator[StackState]:
    """`mlops up` on free ports in a temp home; `mlops down` afterwards, whatever happened."""
    home = tmp_path_factory.mktemp("stack-home")
    prefect_port, mlflow_port = free_port(), free_port()
    started = time.monotonic()
    up = mlops_cli(
        home, "up", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = read_state(home)
        assert state is not None
        state_seconds = time.monotonic() - started
        print(f"mlops up took {state_seconds:.1f} s")
        yield state
    finally:
        mlops_cli(home, "down", timeout=120)
        for leftover in processes_of(home):
            leftover.kill()
