"""Many flow runs at once against a real Prefect server on SQLite, and what the server lost.

``python -m tests.reliability.prefect_sqlite_load [--runs 20] [--tasks 5] [--repeat 2]
[--config defaults --config recommended] [--env KEY=VALUE ... --name NAME] [--processes]
[--postgres] [--keep]``

For each configuration (extra environment of ``prefect server start``) and repetition: start
the server on 127.0.0.1 in a temporary PREFECT_HOME (SQLite there, or with ``--postgres`` a
database on a temporary PostgreSQL server), add the stack's crash-detection automation, start
``--runs`` flow runs of ``--tasks`` logging tasks at the same instant (threads behind a
barrier in one driver process; ``--processes``: one driver process per flow run, released
together once all have imported Prefect), and print one row:

* ``completed``: flow runs that ended COMPLETED;
* ``locked_errors`` / ``locked_lines``: "database is locked" failures in the server's log;
* ``dead_lettered`` (``..._completed``): messages the server's in-memory broker gave up on
  (files under PREFECT_HOME/dlq), of them ``prefect.flow-run.Completed`` events: consumers
  such as the automations never processed them;
* ``dropped_lines``: events the event persister or task-run recorder dropped;
* ``completed_events``: ``prefect.flow-run.Completed`` events stored for those flow runs, read
  back through ``POST /api/events/filter``;
* ``run_seconds``: from starting the driver(s) to the last flow run's end, the drivers'
  start-up included (seconds; with ``--processes`` twenty of them share the cores);
  ``event_seconds``: then until every Completed event was stored.

``python -m tests.reliability.prefect_sqlite_load drive N TASKS [--wait-for-go]`` is the
driver itself: it needs PREFECT_API_URL in its environment and prints one JSON line per run.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from prefect_mlops.infra.crash_detection import HEARTBEAT_SECONDS, ensure_crash_detection
from prefect_mlops.infra.environment import QUIET_ENVIRONMENT
from prefect_mlops.infra.prefect_sqlite import sqlite_server_env
from tests.ports import free_port
from tests.postgres import PostgresServer, postgres_server

BIN = Path(sys.executable).parent
LOCKED = "database is locked"
COMPLETED_EVENT = "prefect.flow-run.Completed"
LOAD_FLOW = "sqlite-load-stage"
DATABASE_URL = "PREFECT_SERVER_DATABASE_CONNECTION_URL"
EVENT_WAIT_S = 30.0
"""How long to wait for the event persister to store every Completed event."""

CONFIGURATIONS: dict[str, Callable[[], dict[str, str]]] = {
    "defaults": dict,
    "recommended": sqlite_server_env,
}
"""Named extra environments for ``prefect server start``; ``--env KEY=VALUE`` adds one-offs."""


@dataclass(frozen=True)
class Server:
    """A running ``prefect server start``: where it answers and where it writes."""

    api_url: str
    home: Path
    log: Path


@dataclass
class LoadResult:
    """What one burst of concurrent flow runs did to the server."""

    config: str
    runs: int
    completed: int
    locked_lines: int
    locked_errors: int
    dead_lettered: int
    dead_lettered_completed: int
    dropped_lines: int
    completed_events: int
    run_seconds: float
    event_seconds: float


# ---------------------------------------------------------------- the driver (client side)


def drive(runs: int, tasks: int, wait_for_go: bool = False) -> list[dict[str, str]]:
    """Start ``runs`` flow runs of ``tasks`` tasks each at the same instant, in threads.

    Args:
        runs: How many flow runs to start together.
        tasks: How many tasks each flow run runs (one after the other, like a stage).
        wait_for_go: Print ``ready`` and wait for a line on stdin before starting, so that a
            parent can release many driver processes together.

    Returns:
        One ``{"flow_run_id", "state"}`` (or ``{"error"}``) per flow run.
    """
    from prefect import flow, get_run_logger, task

    @task
    def step(index: int, seconds: float) -> int:
        get_run_logger().info("step %d of a stage", index)
        time.sleep(seconds)
        return index

    @flow(name=LOAD_FLOW)
    def stage(count: int) -> int:
        return sum(step(i, 0.2) for i in range(count))

    barrier = threading.Barrier(runs)
    outcomes: list[dict[str, str]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait()
        try:
            state = stage(tasks, return_state=True)
            outcome = {
                "flow_run_id": str(state.state_details.flow_run_id),
                "state": state.type.value,
            }
        except Exception as error:  # counted by the caller, not raised
            outcome = {"error": f"{type(error).__name__}: {error}"}
        with lock:
            outcomes.append(outcome)

    if wait_for_go:
        print("ready", flush=True)
        sys.stdin.readline()
    threads = [threading.Thread(target=one) for _ in range(runs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


# ---------------------------------------------------------------- the server


def server_env(home: Path, extra: dict[str, str]) -> dict[str, str]:
    """This process's environment without its Prefect settings, a fresh PREFECT_HOME, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 180) -> None:
    """Return once ``url`` answers 200.

    Raises:
        RuntimeError: if the server exits or does not answer within ``seconds``.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"The server behind {url} exited ({process.returncode}).")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {seconds:.0f}s.")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def prefect_server(extra: dict[str, str], home: Path) -> Iterator[Server]:
    """A real ``prefect server start`` on 127.0.0.1 with PREFECT_HOME ``home``, for the block."""
    port = free_port()
    log = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            env=server_env(home, extra),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/health", process)
        yield Server(f"http://127.0.0.1:{port}/api", home, log)
    finally:
        stop(process)


# ---------------------------------------------------------------- one measurement


def client_env(server: Server) -> dict[str, str]:
    """The environment of a driver process: the server's API, nothing else of Prefect's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {
        "PREFECT_API_URL": server.api_url,
        "PREFECT_HOME": str(server.home / "client"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        **QUIET_ENVIRONMENT,  # what the stack gives its processes: INFO logs, sent to the API
        # as prefect.yaml sets for every deployment: each run beats once at its start
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
    }


def add_crash_detection(api_url: str) -> None:
    """The stack's crash-detection automation: it keeps a bucket per flow run (heartbeat, then
    a final state such as Completed), so the triggers service writes to the database on them."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url) as client:
        ensure_crash_detection(client)


def driver_command(runs: int, tasks: int, *flags: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.reliability.prefect_sqlite_load",
        "drive",
        str(runs),
        str(tasks),
        *flags,
    ]


def parse_outcomes(stdout: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def run_in_threads(server: Server, runs: int, tasks: int) -> list[dict[str, str]]:
    """One driver process, ``runs`` threads released by a barrier."""
    finished = subprocess.run(
        driver_command(runs, tasks),
        env=client_env(server),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    outcomes = parse_outcomes(finished.stdout)
    if finished.returncode != 0 or len(outcomes) != runs:
        raise RuntimeError(f"The driver failed ({finished.returncode}): {finished.stderr[-3000:]}")
    return outcomes


def run_in_processes(server: Server, runs: int, tasks: int) -> list[dict[str, str]]:
    """``runs`` driver processes of one flow run each, released together once all imported.

    Raises:
        RuntimeError: if a driver exits before it is ready.
    """
    drivers = [
        subprocess.Popen(
            driver_command(1, tasks, "--wait-for-go"),
            env=client_env(server),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for _ in range(runs)
    ]
    try:
        for driver in drivers:
            if driver.stdout is None or driver.stdout.readline().strip() != "ready":
                raise RuntimeError(f"A driver exited before it was ready ({driver.poll()}).")
        for driver in drivers:
            assert driver.stdin is not None
            driver.stdin.write("go\n")
            driver.stdin.flush()
        outcomes: list[dict[str, str]] = []
        for driver in drivers:
            stdout, _ = driver.communicate(timeout=600)
            outcomes += parse_outcomes(stdout) or [{"error": f"driver exited {driver.returncode}"}]
        return outcomes
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
                driver.wait()


def stored_completed_events(api_url: str, flow_run_ids: list[str], since: str) -> int:
    """How many ``prefect.flow-run.Completed`` events the server stored for these flow runs."""
    body = {
        "filter": {
            "occurred": {"since": since},
            "event": {"name": [COMPLETED_EVENT]},
            "resource": {"id": [f"prefect.flow-run.{i}" for i in flow_run_ids]},
        },
        "limit": 50,
    }
    response = httpx.post(f"{api_url}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    return len({event["resource"]["prefect.resource.id"] for event in response.json()["events"]})


def wait_for_completed_events(api_url: str, flow_run_ids: list[str], since: str) -> int:
    """Poll until every Completed event is stored or :data:`EVENT_WAIT_S` passed."""
    deadline = time.monotonic() + EVENT_WAIT_S
    while True:
        found = stored_completed_events(api_url, flow_run_ids, since)
        if found >= len(flow_run_ids) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def dead_letters(home: Path) -> Counter[str]:
    """Messages the in-memory messaging moved to its dead-letter folder, by event name."""
    found: Counter[str] = Counter()
    for path in (home / "dlq").glob("*"):
        with contextlib.suppress(ValueError, OSError):
            attributes = json.loads(path.read_bytes()).get("attributes") or {}
            found[attributes.get("event", "?")] += 1
    return found


def read_log_counts(log: Path) -> dict[str, int]:
    """Lines of the server's log about locked databases and dropped messages.

    ``locked_lines`` is what ``grep -c`` finds; each failure prints two of them (SQLite's error
    and SQLAlchemy's), so ``locked_errors`` counts one per traceback. ``dropped_lines``: events
    the event persister or the task-run recorder gave up on (gone from storage).
    """
    lines = log.read_text(errors="replace").splitlines()
    return {
        "locked_lines": sum(LOCKED in line for line in lines),
        "locked_errors": sum(
            line.startswith("sqlalchemy.exc.OperationalError") and LOCKED in line for line in lines
        ),
        "dropped_lines": sum("dropping" in line.lower() for line in lines),
    }


def measure(
    config: str,
    extra: dict[str, str],
    runs: int,
    tasks: int,
    processes: bool = False,
    keep: bool = False,
) -> LoadResult:
    """Start a fresh server with ``extra``, run the burst, count what the server kept.

    Args:
        config: The configuration's name, for the table.
        extra: Variables added to ``prefect server start``'s environment.
        runs: How many flow runs to start at the same instant.
        tasks: Tasks per flow run.
        processes: One driver process per flow run instead of threads in one process.
        keep: Keep the server's PREFECT_HOME (its log, database, dead letters) for reading.

    Returns:
        The counts of one measurement.
    """
    home = Path(tempfile.mkdtemp(prefix="prefect-sqlite-load-"))
    with prefect_server(extra, home) as server:
        add_crash_detection(server.api_url)
        time.sleep(2)  # the triggers service loads the automation
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 60))
        started = time.monotonic()
        outcomes = (run_in_processes if processes else run_in_threads)(server, runs, tasks)
        run_seconds = time.monotonic() - started
        ids = [o["flow_run_id"] for o in outcomes if "flow_run_id" in o]
        events = wait_for_completed_events(server.api_url, ids, since)
        event_seconds = time.monotonic() - started - run_seconds
        time.sleep(2)  # let a last retry reach the dead-letter folder before counting
    letters = dead_letters(home)
    counts = read_log_counts(server.log)
    if not keep:
        shutil.rmtree(home, ignore_errors=True)
    return LoadResult(
        config=config,
        runs=runs,
        completed=sum(o.get("state") == "COMPLETED" for o in outcomes),
        dead_lettered=sum(letters.values()),
        dead_lettered_completed=letters[COMPLETED_EVENT],
        completed_events=events,
        run_seconds=round(run_seconds, 1),
        event_seconds=round(event_seconds, 1),
        **counts,
    )


# ---------------------------------------------------------------- the table


COLUMNS = (
    ("config", 24),
    ("runs", 5),
    ("completed", 10),
    ("locked_lines", 13),
    ("locked_errors", 14),
    ("dead_lettered", 14),
    ("dead_lettered_completed", 24),
    ("dropped_lines", 14),
    ("completed_events", 17),
    ("run_seconds", 12),
    ("event_seconds", 14),
)


def format_row(values: dict[str, object]) -> str:
    return " ".join(str(values[name]).ljust(width) for name, width in COLUMNS)


def parse_env(pairs: list[str]) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in pairs)


def main(argv: list[str] | None = None) -> None:
    """Measure each configuration ``--repeat`` times and print the table (and JSON lines)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--processes", action="store_true", help="one driver process per run")
    parser.add_argument("--config", action="append", choices=sorted(CONFIGURATIONS))
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE, one configuration")
    parser.add_argument("--name", default="custom", help="name of the --env configuration")
    parser.add_argument("--keep", action="store_true", help="keep each server's PREFECT_HOME")
    parser.add_argument(
        "--postgres", action="store_true", help="a temp PostgreSQL server instead of SQLite"
    )
    args = parser.parse_args(argv)
    chosen = {name: CONFIGURATIONS[name]() for name in args.config or []}
    if args.env:
        chosen[args.name] = parse_env(args.env)
    chosen = chosen or {name: make() for name, make in CONFIGURATIONS.items()}
    with contextlib.ExitStack() as stack:
        databases = stack.enter_context(postgres_databases()) if args.postgres else None
        print(format_row({name: name for name, _ in COLUMNS}), flush=True)
        for name, extra in chosen.items():
            label = f"{name}+postgres" if databases is not None else name
            for _ in range(args.repeat):
                database = {} if databases is None else {DATABASE_URL: next(databases)}
                result = measure(
                    label, extra | database, args.runs, args.tasks, args.processes, args.keep
                )
                print(format_row(asdict(result)), flush=True)
                print("#", json.dumps(asdict(result) | {"env": extra}), flush=True)


@contextlib.contextmanager
def postgres_databases() -> Iterator[Iterator[str]]:
    """A temp PostgreSQL server; yields an endless supply of fresh databases' asyncpg URLs."""

    def fresh(server: PostgresServer) -> Iterator[str]:
        for index in itertools.count():
            name = f"prefect_load_{index}"
            server.create_database(name)
            yield server.url(name, "+asyncpg")

    with postgres_server() as server:
        yield fresh(server)


if __name__ == "__main__":
    if sys.argv[1:2] == ["drive"]:
        for outcome in drive(int(sys.argv[2]), int(sys.argv[3]), "--wait-for-go" in sys.argv):
            print(json.dumps(outcome), flush=True)
    else:
        main()
