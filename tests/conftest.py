"""Shared fixtures: every test gets its own state folder; nothing touches the repo's .mlops/."""

from __future__ import annotations

import os

# Before any test module imports Dask, Prefect or MLflow (they read these at import time).
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import itertools
from pathlib import Path

import pytest

from prefect_mlops.mlops.settings import get_settings
from tests.postgres import PostgresServer, postgres_bin_dir, postgres_server

pytest_plugins = [
    "tests.fixtures"
]  # real components, shared by the integration and reliability suites

_databases = itertools.count()


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Point MLOPS_HOME (and so MLflow, datasets, artifacts) at a temp folder for one test."""
    home = tmp_path / "mlops-home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    # set, not deleted: mlflow.set_tracking_uri() exports it, and undo must restore it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    # mlflow.set_registry_uri() exports this one: without a reset it would leak between tests
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{home / 'mlflow.db'}")
    monkeypatch.delenv("MLOPS_ARTIFACT_STORE", raising=False)
    # mlflow.set_tracking_uri() (the pipeline's tracking_client) also sets a process-wide URI
    # that wins over the variables: an earlier test's server, long stopped, must not be it.
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    mlflow.set_registry_uri(f"sqlite:///{home / 'mlflow.db'}")
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """One PostgreSQL server for the session (Debian's package, installed by `make test`)."""
    if postgres_bin_dir() is None:
        if os.environ.get("MLOPS_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (MLOPS_REQUIRE_POSTGRES) but not installed")
        pytest.skip("PostgreSQL is not installed: run infra/local/install_postgres.sh")
    with postgres_server() as server:
        yield server


def fresh_database_url(backend: str, folder: Path, postgres: PostgresServer | None) -> str:
    """An empty database: a new SQLite file in ``folder``, or a new database on the server."""
    name = f"test_{next(_databases)}"
    if backend == "sqlite":
        return f"sqlite:///{folder / (name + '.db')}"
    return postgres.create_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """A factory of empty databases, once on SQLite and once on PostgreSQL."""
    server = request.getfixturevalue("postgres") if request.param == "postgres" else None
    return lambda: fresh_database_url(request.param, tmp_path, server)
