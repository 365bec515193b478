"""Real components on loopback: a Prefect API (test harness), LocalCluster, MLflow on SQLite."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
