"""``mlops status``: each recorded component of the local stack, running or not, and healthy."""

from __future__ import annotations

from pydantic import BaseModel

from prefect_mlops.infra.fork_server import ping
from prefect_mlops.infra.stack.components import (
    fork_server_socket,
    pool_has_online_worker,
    prefect_api,
    server_specs,
)
from prefect_mlops.infra.stack.processes import http_ok, is_alive, recent_restarts
from prefect_mlops.infra.stack.state import (
    FORK_SERVER,
    PREFECT_SERVER,
    RESTART_LIMIT,
    RESTART_WINDOW_SECONDS,
    SUPERVISOR,
    WORKER_PREFIX,
    ProcessRecord,
    StackState,
)


class ComponentStatus(BaseModel):
    """One line of ``mlops status``."""

    name: str
    pid: int | None
    healthy: bool
    detail: str
    url: str | None = None
    restarts: int = 0


def stack_status(state: StackState) -> list[ComponentStatus]:
    """Each recorded component: running or not, healthy by its own measure, restarts."""
    servers = server_specs(state)
    answering = {name: http_ok(spec.health_url) for name, spec in servers.items()}
    rows = []
    for name, record in state.processes.items():
        if not is_alive(record):
            ok, detail = False, _not_running(record)
        elif name in servers:
            ok = answering[name]
            detail = "healthy" if ok else "running, not responding"
        elif name == SUPERVISOR:
            ok, detail = True, "watching the others"
        elif name == FORK_SERVER:
            ok, detail = _fork_server(state)
        else:
            ok = answering[PREFECT_SERVER] and _worker_online(
                state, name.removeprefix(WORKER_PREFIX)
            )
            detail = "online" if ok else "running, not reported online"
        rows.append(
            ComponentStatus(
                name=name,
                pid=record.pid if is_alive(record) else None,
                healthy=ok,
                detail=detail,
                url=record.url,
                restarts=record.restarts,
            )
        )
    return rows


def _not_running(record: ProcessRecord) -> str:
    recent = recent_restarts(record)
    if len(recent) >= RESTART_LIMIT and record.name != SUPERVISOR:
        minutes = RESTART_WINDOW_SECONDS // 60
        return f"not running; supervisor gave up ({len(recent)} restarts in {minutes} min)"
    return "not running"


def _worker_online(state: StackState, pool: str) -> bool:
    with prefect_api(state):
        return pool_has_online_worker(pool)


def _fork_server(state: StackState) -> tuple[bool, str]:
    """Whether the fork server answers, and what it has done."""
    found = ping(fork_server_socket(state))
    if found is None:
        return False, "running, not answering (importing?)"
    if found["stale"]:
        return True, f"code changed: restarts after {found['running']} run(s)"
    return True, f"{found['served']} run(s) started warm, {found['running']} running"
