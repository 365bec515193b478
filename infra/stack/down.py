"""``mlops down``: stop every process ``mlops up`` started (supervisor, workers, servers)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import psutil

from prefect_mlops.infra.stack.processes import is_alive, stop_processes
from prefect_mlops.infra.stack.state import (
    LOCK_SECONDS,
    SUPERVISOR,
    WORKER_PREFIX,
    ProcessRecord,
    lock_message,
    read_state,
    stack_lock,
    state_path,
)


def bring_down(home: Path, say: Callable[[str], None] = print) -> int:
    """Stop every process ``mlops up`` started under ``home``; safe to run twice.

    The supervisor goes first, so that it restarts nothing that is being stopped; then the
    workers, so that none starts a run against a server that is going away; then the fork
    server (and the flow runs it forked) and the servers.

    Returns:
        How many processes were stopped.
    """
    home = home.resolve()
    state = read_state(home)
    if state is None:
        say(f"No local stack recorded under {home}; nothing to stop.")
        return 0
    stopped = 0
    supervisor = state.processes.get(SUPERVISOR)
    if supervisor is not None:
        stopped += _stop_supervisor(supervisor, say)
    with stack_lock(home, LOCK_SECONDS) as locked:
        if not locked:
            say(f"warning: {lock_message(home)} Stopping the stack anyway.")
        state = read_state(home) or state  # the supervisor may have recorded a restart
        records = [r for r in state.processes.values() if r.name != SUPERVISOR]
        workers = [r for r in records if r.name.startswith(WORKER_PREFIX)]
        servers = [r for r in records if not r.name.startswith(WORKER_PREFIX)]
        for group in (workers, servers):
            for name, count in stop_processes(group).items():
                stopped += count
                _say_stopped(name, count, say)
        state_path(home).unlink(missing_ok=True)
    say("Local stack stopped.")
    return stopped


def _stop_supervisor(record: ProcessRecord, say: Callable[[str], None]) -> int:
    """Stop the supervisor process alone (what it restarted is stopped with the rest)."""
    if not is_alive(record):
        _say_stopped(record.name, 0, say)
        return 0
    process = psutil.Process(record.pid)
    with suppress(psutil.NoSuchProcess):
        process.terminate()
        try:
            process.wait(timeout=10)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    _say_stopped(record.name, 1, say)
    return 1


def _say_stopped(name: str, count: int, say: Callable[[str], None]) -> None:
    plural = "es" if count != 1 else ""
    say(f"  {name:<26} " + (f"stopped ({count} process{plural})" if count else "was not running"))
