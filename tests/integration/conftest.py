"""Real components on loopback: a Prefect API (test harness), LocalCluster, MLflow on SQLite."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from mlops.config import PipelineConfig, parse_config
from mlops.synthetic import write_dataset

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """One temporary Prefect server (SQLite) for the whole session, stopped at the end."""
    home = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_HOME"] = home
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def fraud_file(data_dir) -> Path:
    return write_dataset("fraud", 30_000, data_dir / "fraud.parquet", seed=5, chunk_rows=10_000)


@pytest.fixture(scope="session")
def cars_file(data_dir) -> Path:
    return write_dataset("car_dealership", 12_000, data_dir / "cars.csv", seed=6, chunk_rows=6_000)


def bundled_config(name: str, source: Path, **training) -> PipelineConfig:
    """A bundled use case pointed at a test file, with a quicker training budget."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"].update({"n_estimators": 150, **training})
    return parse_config(raw, origin=name)


@pytest.fixture
def fraud_config(fraud_file) -> PipelineConfig:
    return bundled_config("fraud_detection", fraud_file)


@pytest.fixture
def cars_config(cars_file) -> PipelineConfig:
    return bundled_config("car_dealership", cars_file)


def state_env(home: Path) -> dict[str, str]:
    """The variables that point every command at the state folder ``home`` and its MLflow store."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return {"MLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}


@contextmanager
def serving_process(model: str, port: int, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A real `mlops serve MODEL` on 127.0.0.1:PORT, up (answering /ping) for the block."""
    mlops = str(Path(sys.executable).parent / "mlops")
    server = subprocess.Popen(
        [mlops, "serve", model, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                output = server.stdout.read() if server.poll() is not None else "(still running)"
                raise RuntimeError(f"mlops serve did not come up on port {port}: {output}")
            time.sleep(0.3)
        yield server
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory, fraud_file):
    """A fraud model trained and promoted by the pipeline, in a registry of its own."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.preprocess import preprocess_flow
    from flows.retrain import retraining_pipeline_flow
    from mlops.settings import get_settings
    from serving.loader import load_served_model
    from tasks.preprocessing import read_split

    home = tmp_path_factory.mktemp("serving-home")
    env = state_env(home)
    uri = env["MLFLOW_TRACKING_URI"]
    with pytest.MonkeyPatch.context() as patch:  # only while it is built: tests pass uri on
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        config = bundled_config("fraud_detection", fraud_file, n_estimators=60)
        result = retraining_pipeline_flow(config)
        rows = read_split(preprocess_flow(config), "test").head(300)
        served = load_served_model(MlflowClient(uri, registry_uri=uri), "fraud-detector", uri)
        pyfunc = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
        columns = served.spec.input_columns
        expected = pyfunc.predict(rows[columns])
    get_settings.cache_clear()
    return {
        "home": home,
        "uri": uri,
        "served": served,
        "rows": rows[columns].reset_index(drop=True),
        "expected": expected.reset_index(drop=True),
        "version": result.model_version,
        "env": env,
    }


def markdown_artifacts(flow_run_id) -> dict[str, str]:
    """The Prefect markdown artifacts a flow run created, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return {a.key: a.data for a in found if a.type == "markdown"}
