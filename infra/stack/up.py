"""``mlops up``: start (or complete) the local stack, roll back what it started on a failure."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_mlops.infra.stack.components import (
    SERVER_START_SECONDS,
    ServerSpec,
    server_specs,
    start_component,
    wait_ready,
    warm_stages,
)
from prefect_mlops.infra.stack.prefect_file import project_pools
from prefect_mlops.infra.stack.processes import (
    http_ok,
    is_alive,
    port_in_use,
    reap_orphans,
    stop_process,
    stop_processes,
)
from prefect_mlops.infra.stack.project import prepare_prefect
from prefect_mlops.infra.stack.state import (
    FORK_SERVER,
    LOCK_SECONDS,
    MLFLOW_SERVER,
    PREFECT_SERVER,
    SERVING,
    SUPERVISOR,
    WORKER_PREFIX,
    ProcessRecord,
    StackError,
    StackState,
    lock_message,
    read_state,
    stack_dir,
    stack_lock,
    state_path,
    write_state,
)
from prefect_mlops.mlops.settings import get_settings


@dataclass(frozen=True)
class StackOptions:
    """Where the stack runs. ``None``: as the running stack has it, else the default."""

    project_dir: Path | None = None
    host: str | None = None
    prefect_port: int | None = None
    mlflow_port: int | None = None
    redeploy: bool = False
    serving_port: int | None = None
    serving_model: str | None = None


def bring_up(
    home: Path,
    asked: StackOptions,
    defaults: StackOptions,
    say: Callable[[str], None] = print,
) -> StackState:
    """Start (or complete) the local stack and deploy the project to it.

    Every port it needs is checked before anything starts. If a component still fails to
    start (or anything else fails), what this call started is stopped again and the rest is
    left as it was.

    Args:
        home: The state folder (``MLOPS_HOME``).
        asked: What the user asked for (command-line options).
        defaults: Settings for what they did not ask for, unless a stack already runs.
        say: Where progress goes.

    Returns:
        The stack's recorded state.

    Raises:
        StackError: a port is taken by another program, a stack already runs with other
            settings, another command holds the stack, or a component failed to start.
    """
    home = home.resolve()
    with stack_lock(home, LOCK_SECONDS) as locked:
        if not locked:
            raise StackError(lock_message(home))
        state = _state_to_reuse(home, asked, defaults)
        say(f"Local stack in {home} (logs: {stack_dir(home) / 'logs'})")
        check_ports(state)
        if state.serving_token is None:  # recorded with the first process started
            state.serving_token = secrets.token_urlsafe(24)
        started = StartedHere(state)
        try:
            _start_everything(state, asked.redeploy, started, say)
        except BaseException:
            started.roll_back(say)
            raise
    return state


def _start_everything(
    state: StackState, redeploy: bool, started: StartedHere, say: Callable[[str], None]
) -> None:
    specs = server_specs(state)
    _start_servers(state, [specs[PREFECT_SERVER], specs[MLFLOW_SERVER]], started, say)
    _start_servers(state, [specs[SERVING]], started, say)  # it reads the registry from MLflow
    pools = project_pools(Path(state.project_dir))
    prepare_prefect(state, pools, redeploy, say)
    for pool in pools:
        _ensure_component(state, f"{WORKER_PREFIX}{pool}", started, say)
    for pool in pools:
        wait_ready(state, state.processes[f"{WORKER_PREFIX}{pool}"])
    say("All workers online.")
    if _warm_stages(state, say):  # until it answers, the workers' runs start cold
        _ensure_component(state, FORK_SERVER, started, say)
        try:
            seconds = wait_ready(state, state.processes[FORK_SERVER])
        except StackError as error:  # a speed-up, not a part the stack needs: go on cold
            say(f"Fork server not ready ({error}); stage processes start cold meanwhile.")
        else:
            say(f"Fork server ready: the flows imported ({seconds:.0f} s).")
    _ensure_component(state, SUPERVISOR, started, say)


def _warm_stages(state: StackState, say: Callable[[str], None]) -> bool:
    """Whether stage processes start warm, from the fork server (unless turned off)."""
    if warm_stages(state):
        return True
    reason = (
        "MLOPS_WARM_STAGES=false"
        if not get_settings().warm_stages
        else "the stack's home is too deep for a Unix socket's path (108 bytes)"
    )
    say(f"  {'fork server':<26} off ({reason}): stage processes start cold")
    return False


class StartedHere:
    """What one ``mlops up`` started, so that a failure part-way can stop exactly that."""

    def __init__(self, state: StackState) -> None:
        self.state = state
        self.replaced: dict[str, ProcessRecord | None] = {}

    def add(self, previous: ProcessRecord | None, record: ProcessRecord) -> None:
        """Note that ``record`` was started here, in place of ``previous`` (a dead one, or none)."""
        self.replaced.setdefault(record.name, previous)

    def roll_back(self, say: Callable[[str], None]) -> None:
        """Stop what was started here; put back the records it replaced; keep everything else."""
        records = [self.state.processes[name] for name in self.replaced]
        if not records:
            return
        say(f"Stopping what this call started: {', '.join(r.name for r in records)}")
        stop_processes(records, grace_seconds=5)
        for name, previous in self.replaced.items():
            if previous is None:
                self.state.processes.pop(name, None)
            else:
                self.state.processes[name] = previous
        if self.state.processes:
            write_state(self.state)
        else:
            state_path(Path(self.state.home)).unlink(missing_ok=True)


def check_ports(state: StackState) -> None:
    """Every server's port is free, or held by that server of this stack.

    Raises:
        StackError: naming each taken port and the option that changes it; nothing was started.
    """
    specs = list(server_specs(state).values())
    ports = [spec.port for spec in specs]
    if len(set(ports)) != len(ports):
        listing = ", ".join(f"{spec.name} {spec.port}" for spec in specs)
        raise StackError(f"The servers need a port each, but got {listing}. Nothing was started.")
    for spec in specs:
        _free_port_of_dead_server(state, spec)
    taken = [
        spec
        for spec in specs
        if not _runs_here(state, spec.name) and port_in_use(state.host, spec.port)
    ]
    if taken:
        raise StackError(
            "\n".join(port_taken_message(state, spec) for spec in taken) + "\nNothing was started."
        )


def port_taken_message(state: StackState, spec: ServerSpec) -> str:
    return (
        f"Port {spec.port} on {state.host} is in use by another program, so the {spec.name} "
        f"cannot start. Stop that program, or choose another port ({spec.option} or "
        f"{spec.setting})."
    )


def _free_port_of_dead_server(state: StackState, spec: ServerSpec, timeout: float = 10) -> None:
    """Kill what a dead server of this stack left behind, and wait until its port is free.

    Its children keep its port (uvicorn's workers): that port is ours, not another program's.
    """
    record = state.processes.get(spec.name)
    if record is None or is_alive(record) or not reap_orphans(record):
        return
    deadline = time.monotonic() + timeout
    while port_in_use(state.host, spec.port) and time.monotonic() < deadline:
        time.sleep(0.2)


def _runs_here(state: StackState, name: str) -> bool:
    record = state.processes.get(name)
    return record is not None and is_alive(record)


def _start_servers(
    state: StackState, specs: list[ServerSpec], started: StartedHere, say: Callable[[str], None]
) -> None:
    new = [spec for spec in specs if _start_server(state, spec, started, say)]
    for spec in new:  # they start at once; wait for each to answer
        record = state.processes[spec.name]
        seconds = wait_ready(state, record)
        say(
            f"  {spec.name:<26} {spec.url}  started (pid {record.pid}), healthy after {seconds:.1f} s"
        )


PLACEMENT = ("project_dir", "host", "prefect_port", "mlflow_port", "serving_port", "serving_model")


def _placement(options: StackOptions) -> dict[str, Any]:
    """The options that say where the stack runs (not what to do on this call)."""
    return {k: getattr(options, k) for k in PLACEMENT}


def _state_to_reuse(home: Path, asked: StackOptions, defaults: StackOptions) -> StackState:
    existing = read_state(home)
    if existing and any(is_alive(r) for r in existing.processes.values()):
        running = StackOptions(
            Path(existing.project_dir),
            existing.host,
            existing.prefect_port,
            existing.mlflow_port,
            serving_port=existing.serving_port,
            serving_model=existing.serving_model,
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
        **{k: chosen[k] for k in ("serving_port", "serving_model") if chosen[k] is not None},
    )


def _start_server(
    state: StackState, spec: ServerSpec, started: StartedHere, say: Callable[[str], None]
) -> bool:
    """Start the server unless it already runs and answers; returns whether it was started.

    One that runs but does not answer yet may be starting (just restarted by the supervisor,
    or the serving instance loading the champion): it gets SERVER_START_SECONDS to answer
    before it is replaced.

    Raises:
        StackError: if its port is taken by a program that is not this stack's server.
    """
    record = state.processes.get(spec.name)
    if record and is_alive(record):
        if not http_ok(spec.health_url):
            say(f"  {spec.name:<26} running (pid {record.pid}) but not answering yet; waiting")
            with suppress(StackError):
                wait_ready(state, record)
        if http_ok(spec.health_url):
            say(f"  {spec.name:<26} {spec.url}  already running (pid {record.pid})")
            return False
        say(f"  {spec.name:<26} not answering after {SERVER_START_SECONDS} s: starting it again")
        stop_process(record)
    elif record:
        reap_orphans(record)  # a server killed alone leaves children holding its port
    if port_in_use(state.host, spec.port):  # taken since check_ports
        raise StackError(port_taken_message(state, spec))
    started.add(record, start_component(state, spec.name))
    return True


def _ensure_component(
    state: StackState, name: str, started: StartedHere, say: Callable[[str], None]
) -> None:
    """Start a worker, the fork server or the supervisor unless it runs."""
    label = name.replace(WORKER_PREFIX, "worker ", 1)
    record = state.processes.get(name)
    if record and is_alive(record):
        say(f"  {label:<26} already running (pid {record.pid})")
        return
    if record:
        reap_orphans(record)
    new = start_component(state, name)
    started.add(record, new)
    say(f"  {label:<26} started (pid {new.pid})")
