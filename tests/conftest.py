"""Shared fixtures: every test gets its own state folder; nothing touches the repo's .mlops/."""

from __future__ import annotations

import os

# Before any test module imports Dask, Prefect or MLflow (they read these at import time).
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import pytest

from mlops.settings import get_settings


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
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
