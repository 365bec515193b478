"""How each component of the local stack is launched (command, environment, URL) and found ready."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prefect_mlops.infra.environment import QUIET_ENVIRONMENT, client_credentials
from prefect_mlops.infra.fork_server import ping, socket_path_fits
from prefect_mlops.infra.mlflow_server import MlflowServerLaunch, mlflow_server_launch
from prefect_mlops.infra.prefect_sqlite import sqlite_server_env
from prefect_mlops.infra.stack.prefect_file import project_deployments
from prefect_mlops.infra.stack.processes import (
    console_script,
    http_ok,
    recent_restarts,
    start_process,
    wait_until,
)
from prefect_mlops.infra.stack.state import (
    FORK_SERVER,
    MLFLOW_SERVER,
    PREFECT_SERVER,
    SERVERS,
    SERVING,
    SUPERVISOR,
    WORKER_PREFIX,
    ProcessRecord,
    StackState,
    stack_dir,
    write_state,
)
from prefect_mlops.mlops.settings import get_settings

SERVING_POLL_SECONDS = 10
"""How often the stack's serving instance checks the champion alias (besides deploy's reload)."""
SERVER_START_SECONDS = 120
"""How long a server may take to answer its health check (the serving instance loads the
champion, if there is one, before it answers)."""
WORKER_START_SECONDS = 60
"""How long a worker may take to report to its pool."""
FORK_SERVER_START_SECONDS = 180
"""How long the fork server may take to import the flows and answer on its socket."""

KEPT_VARIABLES = frozenset(
    {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",  # Postgres instead of SQLite
        "PREFECT_SERVER_API_AUTH_STRING",
        "PREFECT_API_AUTH_STRING",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_SERVER_ALLOWED_HOSTS",
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
    }
)
"""Prefect and MLflow variables of the caller that the stack's processes keep: where the
servers store their data and the credentials to reach them."""


def base_env(state: StackState) -> dict[str, str]:
    """Environment shared by every process of the stack."""
    home = Path(state.home)
    # The caller's Prefect and MLflow variables (a test harness's API, a UI switched off) are
    # not the stack's; every process gets the stack's own.
    env = {
        k: v
        for k, v in os.environ.items()
        if k in KEPT_VARIABLES or not k.startswith(("PREFECT_", "MLFLOW_"))
    }
    env.update(QUIET_ENVIRONMENT)
    env.update(client_credentials(env, get_settings()))
    env.update(
        # `python` of the stage launcher (the local pools' command in prefect.yaml) is this one.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", os.defpath)]),
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=state.prefect_api_url,
        MLFLOW_TRACKING_URI=state.mlflow_url,
        MLOPS_HOME=str(home),
        MLOPS_PROJECT_DIR=state.project_dir,
        PYTHONUNBUFFERED="1",
    )
    return env


def prefect_server_command(state: StackState) -> list[str]:
    return [
        console_script("prefect"),
        "server",
        "start",
        "--host",
        state.host,
        "--port",
        str(state.prefect_port),
    ]


def mlflow_server_launch_for(state: StackState) -> MlflowServerLaunch:
    """The stack's MLflow server: backend store, artifacts and auth from settings."""
    settings = get_settings().model_copy(update={"home": Path(state.home)})
    return mlflow_server_launch(settings, state.host, state.mlflow_port)


def serving_command(state: StackState) -> list[str]:
    return [
        console_script("mlops"),
        "serve",
        state.serving_model,
        "--host",
        state.host,
        "--port",
        str(state.serving_port),
        "--wait-for-model",
    ]


def serving_env(state: StackState) -> dict[str, str]:
    """What a process that talks to the serving instance as its admin needs."""
    return {
        "MLOPS_SERVING_URLS": state.serving_url,
        "MLOPS_SERVING_ADMIN_TOKEN": state.serving_token or "",
    }


def worker_command(pool: str) -> list[str]:
    return [
        console_script("prefect"),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        f"local-{pool}",
    ]


def fork_server_socket(state: StackState) -> Path:
    """Where the stack's fork server listens: ``<home>/stack/fork-server.sock``."""
    return stack_dir(Path(state.home)) / "fork-server.sock"


def warm_stages(state: StackState) -> bool:
    """Whether flow runs start from the fork server: on, and its socket's path fits.

    A Unix socket's path has at most 108 bytes: a stack whose home is deeper than that runs
    its stages cold.
    """
    return get_settings().warm_stages and socket_path_fits(fork_server_socket(state))


def fork_server_command(state: StackState) -> list[str]:
    """The fork server, importing the flow of every deployment of the project."""
    command = [
        sys.executable,
        "-m",
        "prefect_mlops.infra.fork_server",
        "--socket",
        str(fork_server_socket(state)),
    ]
    entrypoints = [d["entrypoint"] for d in project_deployments(Path(state.project_dir))]
    for entrypoint in dict.fromkeys(entrypoints):
        command += ["--entrypoint", entrypoint]
    return command


def supervisor_command(state: StackState) -> list[str]:
    """The supervisor (``infra/supervisor.py``) in this environment's Python."""
    return [sys.executable, "-m", "prefect_mlops.infra.supervisor", "--home", state.home]


@contextmanager
def prefect_api(state: StackState) -> Iterator[None]:
    """Point this process's Prefect client at the stack's server for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: state.prefect_api_url}):
        yield


@dataclass(frozen=True)
class ServerSpec:
    """Where one server of the stack listens and how to tell that it is up."""

    name: str
    url: str
    health_url: str
    port: int
    option: str
    setting: str


def server_specs(state: StackState) -> dict[str, ServerSpec]:
    """The stack's servers, by name, in the order they start."""
    places = {
        PREFECT_SERVER: (state.prefect_url, f"{state.prefect_api_url}/health", state.prefect_port),
        MLFLOW_SERVER: (state.mlflow_url, f"{state.mlflow_url}/health", state.mlflow_port),
        SERVING: (state.serving_url, f"{state.serving_url}/health", state.serving_port),
    }
    specs = {}
    for name, (url, health_url, port) in places.items():
        option = name.split("-")[0]
        specs[name] = ServerSpec(
            name, url, health_url, port, f"--{option}-port", f"MLOPS_{option.upper()}_PORT"
        )
    return specs


def component_launch(state: StackState, name: str) -> tuple[list[str], dict[str, str], str | None]:
    """How to start one component: its command, its environment and its URL.

    Raises:
        UnsafeServerSettings: for the MLflow server, when its admin password is unsafe.
    """
    if name.startswith(WORKER_PREFIX):
        pool = name.removeprefix(WORKER_PREFIX)
        env = base_env(state) | serving_env(state)  # the deploy stage reloads the instance
        env["PREFECT_WORKER_QUERY_SECONDS"] = str(get_settings().worker_poll_s)
        if warm_stages(state):  # its runs are forked by the fork server
            env["MLOPS_WARM_SOCKET"] = str(fork_server_socket(state))
        return worker_command(pool), env, None
    if name == FORK_SERVER:
        # The workers' environment: what the imports read is what a flow run reads.
        return fork_server_command(state), base_env(state) | serving_env(state), None
    if name == SUPERVISOR:
        return supervisor_command(state), base_env(state), None
    url = server_specs(state)[name].url
    if name == PREFECT_SERVER:
        env = base_env(state) | {
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_UI_API_URL": state.prefect_api_url,
        }
        if "postgresql" not in env.get("PREFECT_SERVER_DATABASE_CONNECTION_URL", ""):
            env = sqlite_server_env() | env  # what the user set wins
        return prefect_server_command(state), env, url
    if name == MLFLOW_SERVER:
        mlflow = mlflow_server_launch_for(state)
        return mlflow.command, base_env(state) | mlflow.env, url
    env = {
        "MLOPS_SERVING_ADMIN_TOKEN": state.serving_token or "",
        "MLOPS_SERVING_POLL_S": str(SERVING_POLL_SECONDS),
    }
    return serving_command(state), base_env(state) | env, url


def log_path(state: StackState, name: str) -> Path:
    """The component's log: ``<home>/stack/logs/<name>.log`` (``worker-<pool>.log``)."""
    file_name = name.replace(WORKER_PREFIX, "worker-", 1)
    return stack_dir(Path(state.home)) / "logs" / f"{file_name}.log"


def start_component(state: StackState, name: str, restart: bool = False) -> ProcessRecord:
    """Start one component of the stack and record it.

    Args:
        state: The stack.
        name: The component.
        restart: The supervisor is restarting it after it died: counted, and its back-off
            goes on. A start by ``mlops up`` (a person who fixed the cause) starts the count
            afresh.

    Returns:
        Its new record (also in ``state.processes`` and ``stack.json``).
    """
    command, env, url = component_launch(state, name)
    record = start_process(name, command, env, Path(state.project_dir), log_path(state, name), url)
    previous = state.processes.get(name)
    if previous is not None and restart:
        record.restarts = previous.restarts + 1
        record.restarted_at = [*recent_restarts(previous), time.time()]
    elif previous is not None:
        record.restarts = previous.restarts  # the total stays; the back-off window starts over
    state.processes[name] = record
    write_state(state)
    return record


def wait_ready(state: StackState, record: ProcessRecord) -> float:
    """Wait until a component answers: a server's health check, a worker's pool, a fork server.

    Returns:
        The seconds it took.

    Raises:
        StackError: if it exits or is not ready in time, with its log's tail.
    """
    if record.name in SERVERS:
        health_url = server_specs(state)[record.name].health_url
        return wait_until(lambda: http_ok(health_url), SERVER_START_SECONDS, record.name, record)
    if record.name.startswith(WORKER_PREFIX):
        pool = record.name.removeprefix(WORKER_PREFIX)
        with prefect_api(state):
            return wait_until(
                lambda: _worker_reported_since(pool, record.create_time),
                WORKER_START_SECONDS,
                f"worker for {pool}",
                record,
            )
    if record.name == FORK_SERVER:
        path = fork_server_socket(state)
        return wait_until(
            lambda: ping(path) is not None, FORK_SERVER_START_SECONDS, record.name, record
        )
    return 0.0


def pool_has_online_worker(pool: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return any(str(w.status).upper().endswith("ONLINE") for w in workers)


def _worker_reported_since(pool: str, since: float) -> bool:
    """Whether a worker of ``pool`` sent a heartbeat after ``since`` (epoch seconds).

    A killed worker stays "online" in Prefect until its heartbeats are missed for a while, so
    a new one is known to be up only by a heartbeat of its own.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return any(
        w.last_heartbeat_time is not None and w.last_heartbeat_time.timestamp() >= since - 1
        for w in workers
    )
