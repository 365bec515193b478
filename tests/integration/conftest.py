"""Real components on loopback: a Prefect API (test harness), LocalCluster, MLflow on SQLite.

The fixtures live in :mod:`tests.fixtures` (shared with the reliability suite); every test here
runs against the session's Prefect test server.
"""

from __future__ import annotations

import pytest

from tests.fixtures import (  # noqa: F401 - helpers the test modules import from here
    CONFIGS,
    bundled_config,
    markdown_artifacts,
    serving_process,
    state_env,
)


@pytest.fixture(scope="session", autouse=True)
def _prefect_for_every_test(prefect_api) -> None:
    """Every integration test talks to the session's Prefect test server."""
