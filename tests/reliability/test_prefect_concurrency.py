"""Twenty flow runs at once against the local stack's Prefect server on SQLite.

A real ``prefect server start`` on 127.0.0.1, on SQLite in a temp PREFECT_HOME, started with
:func:`infra.prefect_sqlite.sqlite_server_env` and given the stack's crash-detection
automation, whose trigger keeps a bucket per flow run and so writes to the database on every
run's heartbeat and final state. Twenty flow runs of five tasks start at the same instant
(``tests.reliability.prefect_sqlite_load``, which also compares configurations).

Every run must complete, every ``prefect.flow-run.Completed`` event must be stored, and none
may be dead-lettered on its way to the automations. Prefect's trigger service updates its
buckets in transactions SQLite fails at once under concurrent writes; with Prefect's own
broker (three immediate retries) 1-12 events of a burst were dead-lettered, with the stack's
(:mod:`infra.prefect_broker`, retries after a back-off) none (see ``infra/prefect_sqlite.py``).
"""

from __future__ import annotations

import pytest

from prefect_mlops.infra.prefect_sqlite import sqlite_server_env
from tests.reliability.prefect_sqlite_load import measure

pytestmark = pytest.mark.long  # one server and one burst: 40 s to 2 min on 2 shared cores

RUNS = 20
TASKS = 5


def test_twenty_concurrent_flow_runs_on_sqlite_complete_and_store_their_events(figures):
    result = measure("sqlite_server_env", sqlite_server_env(), runs=RUNS, tasks=TASKS)

    stored = result.completed == RUNS and result.completed_events == RUNS
    figures.record(
        area="orchestration",
        name="20 concurrent flow runs on the SQLite Prefect server",
        injected=(
            f"{RUNS} flow runs of {TASKS} tasks started at the same instant against "
            "`prefect server start` on SQLite with sqlite_server_env() and the stack's "
            "crash-detection automation"
        ),
        held=stored and result.dead_lettered == 0,
        outcome=(
            f"{result.completed}/{RUNS} runs COMPLETED; {result.completed_events}/{RUNS} "
            f"Completed events stored; {result.dead_lettered_completed} Completed events "
            f"dead-lettered by the trigger service (the automation never saw them); "
            f"{result.locked_errors} 'database is locked' errors in the server's log"
        ),
        runs=RUNS,
        completed=result.completed,
        completed_events_stored=result.completed_events,
        dead_lettered=result.dead_lettered,
        dead_lettered_completed=result.dead_lettered_completed,
        locked_errors=result.locked_errors,
        run_seconds=result.run_seconds,
        event_seconds=result.event_seconds,
    )
    assert result.completed == RUNS, result
    assert result.completed_events == RUNS, result  # the events API and the UI show them all
    assert result.dead_lettered == 0, result  # every event reached the automations
