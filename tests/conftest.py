"""Shared fixtures: every test gets its own state folder; nothing touches the repo's .mlops/."""

from __future__ import annotations

import pytest

from mlops.settings import get_settings


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    """Point MLOPS_HOME (and so MLflow, datasets, artifacts) at a temp folder for one test."""
    home = tmp_path / "mlops-home"
    monkeypatch.setenv("MLOPS_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLOPS_ARTIFACT_STORE", raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()
