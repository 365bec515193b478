"""The environment our processes run in: Prefect, MLflow and quiet libraries, set from settings.

``configure_environment`` runs before every ``mlops`` command, before Prefect or Dask is
imported; ``use_local_stack`` points it at the local stack's servers when one runs under the
same home. Settings themselves (``mlops/settings.py``) only read the environment; this module
changes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from prefect_mlops.infra.stack.processes import is_alive
from prefect_mlops.infra.stack.state import MLFLOW_SERVER, PREFECT_SERVER, read_state
from prefect_mlops.mlops.settings import Settings, get_settings

QUIET_ENVIRONMENT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_LEVEL": "INFO",
    # Our modules log progress with the standard logging module; show it with Prefect's logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "tasks,model_registry,infra,serving,mlops",
    # Dask's per-worker INFO chatter drowns the stage logs; workers inherit this.
    "DASK_LOGGING__DISTRIBUTED": "warning",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "GX_ANALYTICS_ENABLED": "false",  # Great Expectations phones home otherwise
}
"""Variables every process of ours starts with, unless the user set them: quiet, no telemetry."""


def configure_environment(settings: Settings) -> None:
    """Point Prefect at a SQLite-backed API under the local state folder and quiet noisy libraries.

    Only fills in variables the user has not set, so ``PREFECT_API_URL`` (a running
    server) or a custom ``PREFECT_HOME`` always wins. When the local stack (``mlops up``) is
    running under the same home, its Prefect and MLflow servers are used. Must run before
    Prefect is imported.
    """
    use_local_stack(settings)
    for name, value in client_credentials(os.environ, settings).items():
        os.environ.setdefault(name, value)
    if "PREFECT_HOME" not in os.environ:
        prefect_home = settings.home_dir / "prefect"
        prefect_home.mkdir(parents=True, exist_ok=True)  # its SQLite file cannot create folders
        os.environ["PREFECT_HOME"] = str(prefect_home)
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("MPLCONFIGDIR", str(settings.home_dir / "cache" / "matplotlib"))


def client_credentials(env: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """Credentials our clients need for servers we start, when ``env`` has none of its own.

    The Prefect server's auth string is its clients' one; with the MLflow auth app on (an
    admin password in ``MLOPS_MLFLOW_ADMIN_PASSWORD``), our processes sign in as its admin.
    """
    added = {}
    if env.get("PREFECT_SERVER_API_AUTH_STRING") and not env.get("PREFECT_API_AUTH_STRING"):
        added["PREFECT_API_AUTH_STRING"] = env["PREFECT_SERVER_API_AUTH_STRING"]
    password = settings.mlflow_admin_password
    if password is not None and not env.get("MLFLOW_TRACKING_USERNAME"):
        added["MLFLOW_TRACKING_USERNAME"] = settings.mlflow_admin_username
        added["MLFLOW_TRACKING_PASSWORD"] = password.get_secret_value()
    return added


def use_local_stack(settings: Settings) -> bool:
    """Point Prefect and MLflow at the local stack's servers if it runs; returns whether it does.

    Variables the user has set are kept. Only the recorded servers' processes are checked (no
    network call), so a command started beside a running stack shows up in its UIs.
    """
    state = read_state(settings.home_dir)
    if state is None:
        return False
    prefect = state.processes.get(PREFECT_SERVER)
    mlflow = state.processes.get(MLFLOW_SERVER)
    if prefect is None or mlflow is None or not (is_alive(prefect) and is_alive(mlflow)):
        return False
    os.environ.setdefault("PREFECT_API_URL", state.prefect_api_url)
    if settings.tracking_uri is None:
        os.environ["MLFLOW_TRACKING_URI"] = state.mlflow_url
        get_settings.cache_clear()
    return True
