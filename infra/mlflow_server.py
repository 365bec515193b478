"""The MLflow tracking server we start (``mlops up``, ``mlops mlflow-server``, the compose file).

Its backend store, artifact storage and authentication come from settings, so one command runs
it on SQLite and local folders for a laptop, or on Postgres and object storage behind MLflow's
basic-auth app in production. Credentials come from the environment only: the admin password
reaches the server as ``MLFLOW_AUTH_ADMIN_PASSWORD`` and is never written to a file.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from prefect_mlops.infra.stack.processes import console_script
from prefect_mlops.mlops.errors import ExitCode, MlopsError
from prefect_mlops.mlops.settings import Settings

MLFLOW_OLD_DEFAULT_PASSWORD = "password1234"
"""The admin password MLflow's basic-auth app shipped with until 3.x: public knowledge."""

MIN_PASSWORD_LENGTH = 12


class UnsafeServerSettings(MlopsError):
    """The server would start open to anyone, or with a password everybody knows."""

    exit_code = ExitCode.BAD_INPUT


@dataclass(frozen=True)
class MlflowServerLaunch:
    """A command line and the variables to add to its environment."""

    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    authenticated: bool = False


def check_admin_password(username: str, password: str) -> None:
    """Refuse an admin password that anyone could guess.

    Raises:
        UnsafeServerSettings: naming ``MLOPS_MLFLOW_ADMIN_PASSWORD`` and what is wrong with it.
    """
    problem = None
    if password == MLFLOW_OLD_DEFAULT_PASSWORD:
        problem = "is MLflow's published default password"
    elif len(password) < MIN_PASSWORD_LENGTH:
        problem = f"is shorter than {MIN_PASSWORD_LENGTH} characters"
    elif password == username:
        problem = "equals the admin user name"
    if problem:
        raise UnsafeServerSettings(
            f"MLOPS_MLFLOW_ADMIN_PASSWORD {problem}: the MLflow server was not started. "
            "Set a long random password, e.g. `openssl rand -base64 24`, from a secret store."
        )


def write_auth_config(settings: Settings) -> Path:
    """The basic-auth app's ini file under home (user database and admin name; no password)."""
    folder = settings.home_dir / "mlflow-auth"
    folder.mkdir(parents=True, exist_ok=True)
    database = settings.mlflow_auth_database_url or f"sqlite:///{folder / 'users.db'}"
    path = folder / "basic_auth.ini"
    path.write_text(
        "[mlflow]\n"
        "# Written by `mlops mlflow-server` from settings; the admin password is not here.\n"
        "default_permission = READ\n"
        f"database_uri = {database}\n"
        f"admin_username = {settings.mlflow_admin_username}\n"
        "# MLflow's basic auth, plus: an experiment's artifact location must lie under the\n"
        "# server's artifact root (else any signed-in user could make the server write anywhere),\n"
        "# and other Authorization schemes get 401 (see infra/mlflow_auth.py).\n"
        "authorization_function = prefect_mlops.infra.mlflow_auth:authenticate\n"
        "# A verified user:password is trusted for 60 s per server worker instead of re-running\n"
        "# the password hash on every request; a changed password takes up to 60 s to apply.\n"
        "auth_cache_ttl_seconds = 60\n"
    )
    return path


def sqlite_store_env(backend_store_uri: str) -> dict[str, str]:
    """For a SQLite backend store: write-ahead logging on the file and no connection pool.

    Under many concurrent clients (20 pipelines registering at once) MLflow's server ran out
    of its pooled connections while writers queued for SQLite's lock, and answered
    ``BAD_REQUEST: QueuePool limit ... reached`` to requests that were fine (8 of 40
    registrations in one measured burst). Without a pool each request opens its own
    connection and waits on SQLite's busy timeout instead; in write-ahead-log mode readers
    never wait for the writer. Both are no-ops for other databases.

    Returns:
        Variables for the server's environment (none for other databases).
    """
    if not backend_store_uri.startswith("sqlite:///"):
        return {}
    path = Path(backend_store_uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as connection:  # the mode is kept in the file
        connection.execute("PRAGMA journal_mode=WAL")
    return {"MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}


def mlflow_server_launch(
    settings: Settings, host: str, port: int, workers: int = 2
) -> MlflowServerLaunch:
    """How to start the tracking server these settings describe.

    Bound to anything but loopback, MLflow answers only the Host headers listed in its own
    ``MLFLOW_SERVER_ALLOWED_HOSTS`` (e.g. ``mlflow.internal:5000``).

    Raises:
        UnsafeServerSettings: when the admin password is unsafe.
    """
    command = [
        console_script("mlflow"),
        "server",
        "--backend-store-uri",
        settings.resolved_backend_store_uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    if settings.mlflow_artifacts_destination:
        command += ["--artifacts-destination", settings.mlflow_artifacts_destination]
        command += ["--default-artifact-root", "mlflow-artifacts:/"]
    else:
        # Clients write to the artifact root directly. The server's upload endpoint
        # (mlflow-artifacts:/) writes there too, not to ./mlartifacts in its working directory.
        command += ["--default-artifact-root", settings.default_artifact_root]
        command += ["--artifacts-destination", settings.default_artifact_root]
    store_env = sqlite_store_env(settings.resolved_backend_store_uri)
    password = settings.mlflow_admin_password
    if password is None:
        return MlflowServerLaunch(command, store_env)
    check_admin_password(settings.mlflow_admin_username, password.get_secret_value())
    config = write_auth_config(settings)
    env = store_env | {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password.get_secret_value(),
        # The auth app's CSRF key: the caller's (shared by replicas behind a load balancer),
        # or one per start, shared by this server's workers.
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY")
        or secrets.token_urlsafe(32),
    }
    return MlflowServerLaunch([*command, "--app-name", "basic-auth"], env, authenticated=True)
