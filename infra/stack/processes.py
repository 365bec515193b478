"""The local stack's background processes: start, watch, stop; ports and health checks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import httpx
import psutil

from prefect_mlops.infra.stack.state import RESTART_WINDOW_SECONDS, ProcessRecord, StackError


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


def reap_orphans(record: ProcessRecord) -> bool:
    """Kill what is left of a dead recorded process's group; returns whether anything was.

    A server killed alone leaves its children running (uvicorn's workers, MLflow's job
    consumers) and holding its port; they stay in its process group, whose id is its pid. The
    group is left alone when that pid now belongs to another program.
    """
    try:
        process = psutil.Process(record.pid)
        ours = abs(process.create_time() - record.create_time) < 1.0
        if not ours or process.status() != psutil.STATUS_ZOMBIE:
            return False  # alive, or the pid was reused: not our group to signal
    except psutil.NoSuchProcess:
        pass
    return _signal_group(record.pid, signal.SIGKILL)


def recent_restarts(record: ProcessRecord, now: float | None = None) -> list[float]:
    """When the component was restarted in the last RESTART_WINDOW_SECONDS (oldest first)."""
    since = (now if now is not None else time.time()) - RESTART_WINDOW_SECONDS
    return [moment for moment in record.restarted_at if moment >= since]


def stop_processes(records: list[ProcessRecord], grace_seconds: float = 10) -> dict[str, int]:
    """Stop recorded processes together: each one's process group and every descendant.

    SIGTERM to all of them first, SIGKILL for whatever is left after ``grace_seconds``.
    Descendants are collected before any signal, so a child in a session of its own (a
    worker's flow-run process and its Dask cluster) is stopped too. What is left of the group
    of a recorded process that already died is killed as well.

    Returns:
        How many processes were stopped, by record name (not counting a dead one's leftovers).
    """
    for record in records:
        if not is_alive(record):
            reap_orphans(record)
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


def _signal_group(pid: int, sig: signal.Signals) -> bool:
    """Signal a process group we started; returns whether it still had members."""
    try:
        os.killpg(pid, sig)  # started with start_new_session, so its group id is its pid
    except (ProcessLookupError, PermissionError):
        return False
    return True


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


def console_script(name: str) -> str:
    """A console script of this environment (the same virtualenv as ``mlops``)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name
