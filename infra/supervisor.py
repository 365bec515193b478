"""The local stack's supervisor: restarts a server or worker that died.

``mlops up`` starts it last (``python -m prefect_mlops.infra.supervisor --home HOME``). Every POLL_SECONDS it
checks the processes recorded in ``<home>/stack/stack.json``; a dead one is started again with
the command ``mlops up`` uses, servers before workers (workers need the Prefect server, the
serving instance needs MLflow). The first restart is immediate; each further one within
RESTART_WINDOW_SECONDS waits twice as long as the one before (2, 4, 8 s ... at most
MAX_BACKOFF_SECONDS); after RESTART_LIMIT restarts in that window it gives up on the component
and says so in its log and in ``mlops status``. Each restart is logged to
``<home>/stack/logs/supervisor.log`` and counted in ``stack.json``.

It only acts on processes that are gone, never on one that is slow to answer (the serving
instance loads the champion before it answers). It changes the stack only while it holds the
stack's lock, which ``mlops up`` and ``mlops down`` hold for their whole run, so the two never
start the same component. ``mlops down`` stops it first. It exits when the stack is stopped or
another supervisor took its place.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from prefect_mlops.infra.stack.components import start_component, wait_ready
from prefect_mlops.infra.stack.processes import is_alive, reap_orphans, recent_restarts
from prefect_mlops.infra.stack.state import (
    RESTART_LIMIT,
    RESTART_WINDOW_SECONDS,
    SERVERS,
    SUPERVISOR,
    ProcessRecord,
    StackError,
    StackState,
    read_state,
    stack_lock,
)

logger = logging.getLogger("prefect_mlops.infra.supervisor")

POLL_SECONDS = 2.0
"""How often the recorded processes are checked."""
MAX_BACKOFF_SECONDS = 60.0


def restart_delay(recent: int) -> float:
    """Seconds between the last restart and the next one, after ``recent`` in the window."""
    return 0.0 if recent == 0 else min(2.0**recent, MAX_BACKOFF_SECONDS)


def start_order(name: str) -> int:
    """Servers in the order they depend on each other, then the workers."""
    return SERVERS.index(name) if name in SERVERS else len(SERVERS)


def due_for_restart(state: StackState, now: float) -> ProcessRecord | None:
    """The first dead component whose backoff has passed and that is not given up on.

    A dead server still in its back-off holds back what comes after it: workers need the
    Prefect server, the serving instance needs MLflow.
    """
    for record in sorted(state.processes.values(), key=lambda r: start_order(r.name)):
        if record.name == SUPERVISOR or is_alive(record):
            continue
        recent = recent_restarts(record, now)
        if len(recent) >= RESTART_LIMIT:
            continue
        last = recent[-1] if recent else 0.0
        if now - last >= restart_delay(len(recent)):
            return record
        if record.name in SERVERS:
            return None
    return None


def given_up(state: StackState, now: float) -> list[ProcessRecord]:
    """Dead components restarted RESTART_LIMIT times in the window: left for a person."""
    return [
        record
        for record in state.processes.values()
        if record.name != SUPERVISOR
        and not is_alive(record)
        and len(recent_restarts(record, now)) >= RESTART_LIMIT
    ]


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Hold off SIGTERM (``mlops down``) while a process is started and recorded.

    Stopped between the two, the supervisor would leave a process that no record names.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Supervisor:
    """Checks the stack under ``home`` and restarts what died, one component per check."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.reported: set[tuple[str, float]] = set()

    def check(self) -> bool:
        """One round: restart one dead component if its time has come.

        Returns:
            False when the supervisor should exit (the stack was stopped or it was replaced).
        """
        now = time.time()
        with stack_lock(self.home, timeout=0) as locked:
            if not locked:
                return True  # `mlops up` or `mlops down` is at work; look again later
            state = read_state(self.home)
            if state is None or not self._is_current(state):
                return False
            self._report_given_up(state, now)
            dead = due_for_restart(state, now)
            if dead is None:
                return True
            record = self._restart(state, dead, now)
        self._wait_until_ready(state, record)
        return True

    def _is_current(self, state: StackState) -> bool:
        mine = state.processes.get(SUPERVISOR)
        return mine is not None and mine.pid == os.getpid()

    def _restart(self, state: StackState, dead: ProcessRecord, now: float) -> ProcessRecord:
        reap_orphans(dead)  # a server killed alone leaves children holding its port
        count = len(recent_restarts(dead, now)) + 1
        with sigterm_deferred():
            record = start_component(state, dead.name, restart=True)
        logger.warning(
            "%s (pid %d) was not running: started it again as pid %d "
            "(restart %d of at most %d in %d min; its log: %s)",
            dead.name,
            dead.pid,
            record.pid,
            count,
            RESTART_LIMIT,
            RESTART_WINDOW_SECONDS // 60,
            record.log,
        )
        return record

    def _wait_until_ready(self, state: StackState, record: ProcessRecord) -> None:
        try:
            seconds = wait_ready(state, record)
        except StackError as error:
            logger.error("%s did not come back: %s", record.name, error)
            return
        logger.warning("%s is ready again (%.1f s after its restart)", record.name, seconds)

    def _report_given_up(self, state: StackState, now: float) -> None:
        for record in given_up(state, now):
            key = (record.name, record.create_time)
            if key in self.reported:
                continue
            self.reported.add(key)
            logger.error(
                "%s died again after %d restarts in %d min: not restarting it. Read %s, fix "
                "the cause, then run `mlops up`.",
                record.name,
                RESTART_LIMIT,
                RESTART_WINDOW_SECONDS // 60,
                record.log,
            )


def reap_children() -> None:
    """Collect the exit status of processes this one started that have died (no zombies)."""
    with suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def main(argv: list[str] | None = None) -> int:
    """Supervise the stack under ``--home`` until it is stopped."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="The stack's MLOPS_HOME.")
    home = parser.parse_args(argv).home.resolve()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)  # its own lines, not every HTTP request of the clients
    logger.info("Supervising the stack in %s (every %.0f s)", home, POLL_SECONDS)
    supervisor = Supervisor(home)
    while supervisor.check():
        reap_children()
        time.sleep(POLL_SECONDS)
    logger.info("The stack in %s was stopped or is supervised by another process: exiting", home)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
