"""Transient failures are retried by the tasks' decorators, against a real MLflow server."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow
from prefect.client.orchestration import get_client

from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.tasks.tracking import open_pipeline_run
from tests.ports import free_port

pytestmark = pytest.mark.slow
MLFLOW = str(Path(sys.executable).parent / "mlflow")


@flow(name="open-run-probe")
def open_run_probe(config):
    return open_pipeline_run(config, return_state=True)


def test_a_tracking_server_that_comes_up_late_is_retried(fraud_config, tmp_path, monkeypatch):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast: leave it to Prefect
    get_settings.cache_clear()
    servers: list[subprocess.Popen] = []

    def start_server_late() -> None:
        time.sleep(3)  # the task's first attempt finds nothing listening
        command = [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        command += ["--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
        command += ["--default-artifact-root", (tmp_path / "artifacts").as_uri()]
        servers.append(
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )

    starter = threading.Thread(target=start_server_late)
    starter.start()
    try:
        state = open_run_probe(fraud_config)
        starter.join()
        run_id = state.result()
        with get_client(sync_client=True) as client:
            task_run = client.read_task_run(state.state_details.task_run_id)
    finally:
        starter.join()
        for server in servers:
            server.terminate()
            server.wait(timeout=30)

    assert task_run.state.is_completed()
    assert task_run.run_count >= 2  # failed while the server was down, then succeeded
    # The server is stopped by now; its store holds the run the retried attempt created.
    stored = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert stored.data.params["use_case"] == fraud_config.name
