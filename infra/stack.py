"""The local stack behind ``mlops up``: a Prefect server, an MLflow server and a worker per work pool.

Every process is started in the background in its own process group, bound to loopback, with
its log under ``<home>/stack/logs/`` and its pid (and start time, so a reused pid is never
mistaken for ours) in ``<home>/stack/stack.json``. ``mlops down`` stops exactly those groups.
``mlops up`` is idempotent: what is already running is kept, what died is started again.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml
from pydantic import BaseModel

from mlops.errors import MlopsError
from mlops.settings import QUIET_ENVIRONMENT

PREFECT_SERVER = "prefect-server"
MLFLOW_SERVER = "mlflow-server"
WORKER_PREFIX = "worker:"
WORKER_POLL_SECONDS = 2
"""How often a stack worker asks its pool for runs (Prefect's default is 10 s)."""


class StackError(MlopsError):
    """The local stack could not be started or reached."""

    exit_code = 1


class ProcessRecord(BaseModel):
    """One background process of the stack."""

    name: str
    pid: int
    create_time: float
    command: list[str]
    log: str
    url: str | None = None


class StackState(BaseModel):
    """What ``mlops up`` started and where, written to ``<home>/stack/stack.json``."""

    home: str
    project_dir: str
    host: str
    prefect_port: int
    mlflow_port: int
    processes: dict[str, ProcessRecord] = {}
    deployed: str | None = None
    """Fingerprint of prefect.yaml and flows/ when they were last deployed to this stack."""

    @property
    def prefect_url(self) -> str:
        """The Prefect UI."""
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def mlflow_url(self) -> str:
        """The MLflow tracking server and UI."""
        return f"http://{self.host}:{self.mlflow_port}"


class ComponentStatus(BaseModel):
    """One line of ``mlops status``."""

    name: str
    pid: int | None
    healthy: bool
    detail: str
    url: str | None = None


# ---------------------------------------------------------------- state on disk


def stack_dir(home: Path) -> Path:
    return home / "stack"


def state_path(home: Path) -> Path:
    return stack_dir(home) / "stack.json"


def read_state(home: Path) -> StackState | None:
    """The recorded stack under ``home``, or None if none was started (or it was stopped)."""
    path = state_path(home)
    if not path.is_file():
        return None
    return StackState.model_validate_json(path.read_text())


def write_state(state: StackState) -> None:
    path = state_path(Path(state.home))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    tmp.replace(path)


# ---------------------------------------------------------------- processes


def is_alive(record: ProcessRecord) -> bool:
    """Whether the recorded process still runs (same pid and the same start time)."""
    try:
        process = psutil.Process(record.pid)
        return (
            abs(process.create_time() - record.create_time) < 1.0
            and process.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.NoSuchProcess:
        return False


def start_process(
    name: str, command: list[str], env: dict[str, str], cwd: Path, log: Path, url: str | None
) -> ProcessRecord:
    """Start ``command`` in the background in a new process group, output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n".encode())
        out.flush()
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ProcessRecord(
        name=name,
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        command=command,
        log=str(log),
        url=url,
    )


def process_tree(record: ProcessRecord) -> list[psutil.Process]:
    """The recorded process and every descendant it has now."""
    if not is_alive(record):
        return []
    try:
        root = psutil.Process(record.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop_processes(records: list[ProcessRecord], grace_seconds: float = 10) -> dict[str, int]:
    """Stop recorded processes together: each one's process group and every descendant.

    SIGTERM to all of them first, SIGKILL for whatever is left after ``grace_seconds``.
    Descendants are collected before any signal, so a child in a session of its own (a
    worker's flow-run process and its Dask cluster) is stopped too.

    Returns:
        How many processes were stopped, by record name.
    """
    trees = {record.name: (record, process_tree(record)) for record in records}
    everything = [process for _, tree in trees.values() for process in tree]
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5)):
        for record, tree in trees.values():
            if tree:
                _signal_group(record.pid, sig)
            for process in tree:
                with suppress(psutil.NoSuchProcess):
                    process.send_signal(sig)
        _, alive = psutil.wait_procs(everything, timeout=wait)
        if not alive:
            break
        everything = alive
    return {name: len(tree) for name, (_, tree) in trees.items()}


def stop_process(record: ProcessRecord, grace_seconds: float = 10) -> int:
    """Stop one recorded process and its descendants; returns how many were stopped."""
    return stop_processes([record], grace_seconds)[record.name]


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # started with start_new_session, so its group id is its pid


# ---------------------------------------------------------------- readiness


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool], timeout: float, what: str, record: ProcessRecord | None = None
) -> float:
    """Poll ``check`` until it is true; return the seconds it took.

    Raises:
        StackError: on timeout, or at once if ``record``'s process died, with its log's tail.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        if record is not None and not is_alive(record):
            raise StackError(f"{what}: the process exited.\n{log_tail(record)}")
        time.sleep(0.5)
    tail = f"\n{log_tail(record)}" if record else ""
    raise StackError(f"{what}: not ready after {timeout:.0f} s.{tail}")


def http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(record: ProcessRecord, lines: int = 20) -> str:
    try:
        text = Path(record.log).read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {record.log})"
    return f"Last lines of {record.log}:\n" + "\n".join(text[-lines:])


# ---------------------------------------------------------------- the project's pools


def project_deployments(project_dir: Path, prefect_file: str = "prefect.yaml") -> list[dict]:
    """The deployments a project's prefect file declares."""
    return yaml.safe_load((project_dir / prefect_file).read_text()).get("deployments", [])


def project_pools(project_dir: Path) -> list[str]:
    """The work pools the project's ``prefect.yaml`` deploys to, in order of first use."""
    return list(dict.fromkeys(d["work_pool"]["name"] for d in project_deployments(project_dir)))


def find_project_dir(explicit: Path | None = None) -> Path:
    """The directory holding ``prefect.yaml``: given, the working directory, or this checkout.

    Raises:
        StackError: if none of them has a ``prefect.yaml``.
    """
    candidates = [explicit] if explicit else [Path.cwd(), Path(__file__).resolve().parents[1]]
    for candidate in candidates:
        if candidate is not None and (candidate / "prefect.yaml").is_file():
            return candidate.resolve()
    raise StackError(
        f"No prefect.yaml in {', '.join(str(c) for c in candidates if c)}. Run this from the "
        "project's root or pass --project-dir."
    )


# ---------------------------------------------------------------- environment


def base_env(state: StackState) -> dict[str, str]:
    """Environment shared by every process of the stack."""
    home = Path(state.home)
    # The caller's Prefect and MLflow variables (a test harness's API, a UI switched off) are
    # not the stack's; every process gets the stack's own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(QUIET_ENVIRONMENT)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_API_URL=state.prefect_api_url,
        MLFLOW_TRACKING_URI=state.mlflow_url,
        MLOPS_HOME=str(home),
        MLOPS_PROJECT_DIR=state.project_dir,
        PYTHONUNBUFFERED="1",
    )
    return env


def _bin(name: str) -> str:
    """A console script of this environment (the same virtualenv as ``mlops``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def prefect_server_command(state: StackState) -> list[str]:
    return [
        _bin("prefect"),
        "server",
        "start",
        "--host",
        state.host,
        "--port",
        str(state.prefect_port),
    ]


def mlflow_server_command(state: StackState) -> list[str]:
    home = Path(state.home)
    return [
        _bin("mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{home / 'mlflow.db'}",
        "--default-artifact-root",
        (home / "mlflow-artifacts").as_uri(),
        "--host",
        state.host,
        "--port",
        str(state.mlflow_port),
        "--workers",
        "2",
    ]


def worker_command(pool: str) -> list[str]:
    return [
        _bin("prefect"),
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--name",
        f"local-{pool}",
    ]


@contextmanager
def prefect_api(state: StackState) -> Iterator[None]:
    """Point this process's Prefect client at the stack's server for the block."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: state.prefect_api_url}):
        yield


# ---------------------------------------------------------------- up


@dataclass(frozen=True)
class StackOptions:
    """Where the stack runs. ``None``: as the running stack has it, else the default."""

    project_dir: Path | None = None
    host: str | None = None
    prefect_port: int | None = None
    mlflow_port: int | None = None
    redeploy: bool = False


def bring_up(
    home: Path,
    asked: StackOptions,
    defaults: StackOptions,
    say: Callable[[str], None] = print,
) -> StackState:
    """Start (or complete) the local stack and deploy the project to it.

    Args:
        home: The state folder (``MLOPS_HOME``).
        asked: What the user asked for (command-line options).
        defaults: Settings for what they did not ask for, unless a stack already runs.
        say: Where progress goes.

    Returns:
        The stack's recorded state.

    Raises:
        StackError: a port is taken by another program, a stack already runs with other
            settings, or a component failed to start.
    """
    home = home.resolve()
    state = _state_to_reuse(home, asked, defaults)
    project_dir = Path(state.project_dir)
    say(f"Local stack in {home} (logs: {stack_dir(home) / 'logs'})")
    started = [spec for spec in server_specs(state).values() if _start_server(state, spec, say)]
    for spec in started:  # both start at once; wait for each to answer
        record = state.processes[spec.name]
        seconds = wait_until(lambda s=spec: http_ok(s.health_url), 120, spec.name, record)
        say(
            f"  {spec.name:<26} {spec.url}  started (pid {record.pid}), healthy after {seconds:.1f} s"
        )
    pools = project_pools(project_dir)
    _prepare_prefect(state, pools, asked.redeploy, say)
    for pool in pools:
        _ensure_worker(state, pool, say)
    with prefect_api(state):
        for pool in pools:
            wait_until(lambda p=pool: _pool_has_online_worker(p), 60, f"worker for {pool}")
    say("All workers online.")
    return state


def _placement(options: StackOptions) -> dict[str, Any]:
    """The options that say where the stack runs (not what to do on this call)."""
    return {k: getattr(options, k) for k in ("project_dir", "host", "prefect_port", "mlflow_port")}


def _state_to_reuse(home: Path, asked: StackOptions, defaults: StackOptions) -> StackState:
    existing = read_state(home)
    if existing and any(is_alive(r) for r in existing.processes.values()):
        running = StackOptions(
            Path(existing.project_dir), existing.host, existing.prefect_port, existing.mlflow_port
        )
        differs = [
            f"{key} {getattr(running, key)} (asked: {value})"
            for key, value in _placement(asked).items()
            if value is not None and value != getattr(running, key)
        ]
        if differs:
            raise StackError(
                f"A stack is already running from {home} with {', '.join(differs)}. "
                "Run `mlops down` first to start it with other settings."
            )
        return existing
    chosen = {k: v if v is not None else getattr(defaults, k) for k, v in _placement(asked).items()}
    return StackState(
        home=str(home),
        project_dir=str(chosen["project_dir"]),
        host=chosen["host"],
        prefect_port=chosen["prefect_port"],
        mlflow_port=chosen["mlflow_port"],
    )


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server of the stack and tell that it is up."""

    name: str
    command: list[str]
    env: dict[str, str]
    url: str
    health_url: str
    port: int
    port_setting: str


def server_specs(state: StackState) -> dict[str, ServerSpec]:
    """The stack's two servers, by name."""
    prefect_env = base_env(state) | {
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": state.prefect_api_url,
    }
    specs = [
        ServerSpec(
            PREFECT_SERVER,
            prefect_server_command(state),
            prefect_env,
            state.prefect_url,
            f"{state.prefect_api_url}/health",
            state.prefect_port,
            "MLOPS_PREFECT_PORT",
        ),
        ServerSpec(
            MLFLOW_SERVER,
            mlflow_server_command(state),
            base_env(state),
            state.mlflow_url,
            f"{state.mlflow_url}/health",
            state.mlflow_port,
            "MLOPS_MLFLOW_PORT",
        ),
    ]
    return {spec.name: spec for spec in specs}


def _start_server(state: StackState, spec: ServerSpec, say: Callable[[str], None]) -> bool:
    """Start the server unless it already runs and answers; returns whether it was started.

    Raises:
        StackError: if its port is taken by a program that is not this stack's server.
    """
    record = state.processes.get(spec.name)
    if record and is_alive(record) and http_ok(spec.health_url):
        say(f"  {spec.name:<26} {spec.url}  already running (pid {record.pid})")
        return False
    if record and is_alive(record):
        stop_process(record)
    if port_in_use(state.host, spec.port):
        option = spec.name.split("-")[0]
        raise StackError(
            f"Port {spec.port} on {state.host} is in use by another program, so the "
            f"{spec.name} cannot start. Stop that program, or choose another port "
            f"(--{option}-port or {spec.port_setting})."
        )
    log = stack_dir(Path(state.home)) / "logs" / f"{spec.name}.log"
    record = start_process(
        spec.name, spec.command, spec.env, Path(state.project_dir), log, spec.url
    )
    state.processes[spec.name] = record
    write_state(state)
    return True


def _prepare_prefect(
    state: StackState, pools: list[str], redeploy: bool, say: Callable[[str], None]
) -> None:
    """Work pools, the crash-detection automation and the project's deployments.

    The project is deployed again only when ``prefect.yaml`` or ``flows/`` changed since the
    last deploy (or ``redeploy``): deploying resets schedules, so a schedule paused in the UI
    stays paused across ``mlops up``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from infra.crash_detection import SILENCE, ensure_crash_detection

    with prefect_api(state), get_client(sync_client=True) as client:
        template = ProcessWorker.get_default_base_job_template()
        for pool in pools:
            with suppress(ObjectAlreadyExists):
                client.create_work_pool(
                    WorkPoolCreate(name=pool, type="process", base_job_template=template)
                )
        say(f"  {'work pools (process)':<26} {', '.join(pools)}")
        created = ensure_crash_detection(client)
        note = "created" if created else "present"
        say(
            f"  {'crash detection':<26} automation {note}: a run silent for "
            f"{SILENCE.total_seconds():.0f} s is marked Crashed"
        )
        current = deployment_fingerprint(Path(state.project_dir))
        if state.deployed == current and not redeploy and _deployments_exist(client, state):
            say(
                f"  {'deployments':<26} unchanged since deployed (prefect.yaml, flows/); "
                "schedules keep their state (--redeploy to deploy again)"
            )
            return
    count = deploy_project(state)
    state.deployed = current
    write_state(state)
    say(f"  {'deployments':<26} {count} deployed from prefect.yaml (prefect deploy --all)")


def deployment_fingerprint(project_dir: Path) -> str:
    """A hash of what a deployment is made of: prefect.yaml and the flows' signatures' files."""
    digest = hashlib.sha256()
    for path in [project_dir / "prefect.yaml", *sorted((project_dir / "flows").glob("*.py"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _deployments_exist(client: Any, state: StackState) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        for deployment in project_deployments(Path(state.project_dir)):
            client.read_deployment_by_name(f"{deployment['name']}/{deployment['name']}")
    except ObjectNotFound:
        return False
    return True


def deploy_project(state: StackState, prefect_file: str = "prefect.yaml") -> int:
    """Run ``prefect deploy --all`` from the project against the stack. Returns the count.

    Raises:
        StackError: with the command's output if it fails.
    """
    log = stack_dir(Path(state.home)) / "logs" / "deploy.log"
    env = base_env(state)
    env.pop("MLOPS_PROJECT_DIR")  # resolved by each worker at run time, not baked in
    command = [_bin("prefect"), "deploy", "--all", "--no-prompt", "--prefect-file", prefect_file]
    done = subprocess.run(
        command, cwd=state.project_dir, env=env, capture_output=True, text=True, timeout=600
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise StackError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{tail}")
    return len(project_deployments(Path(state.project_dir), prefect_file))


def _ensure_worker(state: StackState, pool: str, say: Callable[[str], None]) -> None:
    name = f"{WORKER_PREFIX}{pool}"
    record = state.processes.get(name)
    if record and is_alive(record):
        say(f"  {'worker ' + pool:<26} already running (pid {record.pid})")
        return
    env = base_env(state)
    env["PREFECT_WORKER_QUERY_SECONDS"] = str(WORKER_POLL_SECONDS)
    log = stack_dir(Path(state.home)) / "logs" / f"worker-{pool}.log"
    record = start_process(name, worker_command(pool), env, Path(state.project_dir), log, None)
    state.processes[name] = record
    write_state(state)
    say(f"  {'worker ' + pool:<26} started (pid {record.pid})")


def _pool_has_online_worker(pool: str) -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        workers = client.read_workers_for_work_pool(pool)
    return any(str(w.status).upper().endswith("ONLINE") for w in workers)


# ---------------------------------------------------------------- status and down


def stack_status(state: StackState) -> list[ComponentStatus]:
    """Each recorded component: running or not, and healthy by its own measure."""
    servers = server_specs(state)
    answering = {name: http_ok(spec.health_url) for name, spec in servers.items()}
    rows = []
    for name, record in state.processes.items():
        if not is_alive(record):
            rows.append(ComponentStatus(name=name, pid=None, healthy=False, detail="not running"))
            continue
        if name in servers:
            ok = answering[name]
            detail = "healthy" if ok else "running, not responding"
        else:
            ok = answering[PREFECT_SERVER] and _worker_online(
                state, name.removeprefix(WORKER_PREFIX)
            )
            detail = "online" if ok else "running, not reported online"
        rows.append(
            ComponentStatus(name=name, pid=record.pid, healthy=ok, detail=detail, url=record.url)
        )
    return rows


def _worker_online(state: StackState, pool: str) -> bool:
    with prefect_api(state):
        return _pool_has_online_worker(pool)


def bring_down(home: Path, say: Callable[[str], None] = print) -> int:
    """Stop every process ``mlops up`` started under ``home``; safe to run twice.

    Returns:
        How many processes were stopped.
    """
    state = read_state(home.resolve())
    if state is None:
        say(f"No local stack recorded under {home}; nothing to stop.")
        return 0
    records = list(state.processes.values())
    workers = [r for r in records if r.name.startswith(WORKER_PREFIX)]
    servers = [r for r in records if not r.name.startswith(WORKER_PREFIX)]
    stopped = 0
    # Workers first, so none of them starts a run against a server that is going away.
    for group in (workers, servers):
        for name, count in stop_processes(group).items():
            stopped += count
            plural = "es" if count != 1 else ""
            say(
                f"  {name:<26} "
                + (f"stopped ({count} process{plural})" if count else "was not running")
            )
    state_path(Path(state.home)).unlink(missing_ok=True)
    say("Local stack stopped.")
    return stopped
