"""Settings for a Prefect server on SQLite that many flow runs use at once (the local stack's).

Measured with ``python -m tests.reliability.prefect_sqlite_load`` (20 flow runs of 5 tasks
started together, with the stack's crash-detection automation, on 2 shared cores): on
Prefect 3.8.8's defaults the server logged 45-53 "database is locked" errors per burst, its
trigger service dead-lettered 6-12 of the 20 ``prefect.flow-run.Completed`` events (the
automation never saw them; the events themselves were stored) and the API froze for 60 s at
a time, so the burst took 131-191 s. Two mechanisms, both inside the server:

* Transactions that read and then write (the trigger service's bucket updates, flow-run
  creation) begin ``DEFERRED``; SQLite then fails their first write at once, without waiting
  for its busy timeout, whenever another connection writes meanwhile. The in-memory broker
  retries the event three times within milliseconds and then dead-letters it.
* The garbage collector, on the event loop's thread, finalizes a cursor left by such a
  failure while that cursor's connection waits for the write lock in another thread; the
  loop blocks on the connection's mutex, the writer holding the lock (a coroutine on that
  loop) cannot commit, and everything stalls until the busy timeout (60 s) expires.

No server variable changes the transaction mode, the busy timeout, the connection pool
(Prefect applies the pool settings to PostgreSQL only) or the trigger service's concurrency;
``PREFECT_SERVER_DATABASE_TIMEOUT`` is overridden by a fixed ``PRAGMA busy_timeout`` (60 s;
setting it changed nothing measurable). What the variables below do:

* batch the task-run recorder's writes, the largest avoidable source of write transactions:
  8-28 errors and 1-4 dead-lettered Completed events per burst, 20-83 s;
* select :mod:`infra.prefect_broker`, Prefect's in-memory broker whose consumers retry a
  failed message after a doubling back-off (up to 10 times, about 2 minutes) instead of three
  times at once: the failed writes still happen (4-6 per burst) but every message got
  through, 0 dead-lettered in the bursts measured.

The 60 s stalls remain (one burst of two took 94 s): the busy timeout is fixed in Prefect's
code. For concurrent workloads at scale, point the server at PostgreSQL
(``PREFECT_SERVER_DATABASE_CONNECTION_URL``, as the production profile does): the same burst
there logged no error, dead-lettered nothing and took 10-14 s.
"""

from __future__ import annotations

TASK_RUN_RECORDER_BATCH_SIZE = 100
"""Task-run events the server records per write (Prefect's default: 1)."""
TASK_RUN_RECORDER_FLUSH_SECONDS = 1
"""How long a task run's latest state may wait before it is written (Prefect's default: 5)."""
BROKER = "prefect_mlops.infra.prefect_broker"
"""The message broker module: Prefect's in-memory one with patient retries."""


def sqlite_server_env() -> dict[str, str]:
    """Variables for ``prefect server start`` on SQLite, each with the effect it was measured for.

    Returns:
        Environment variables to add to the Prefect server's environment.
    """
    return {
        # The task-run recorder writes every task-run event on its own by default: hundreds of
        # separate commits in a burst, each able to break a trigger's read-then-write and to
        # stall behind the write lock. Batching them halved the "database is locked" errors
        # (45-53 -> 8-28) and the dead-lettered Completed events (6-12 -> 1-4) and made most
        # bursts finish without a 60 s freeze. (Batching the event persister instead,
        # PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE=200, changed nothing measurable.)
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": str(TASK_RUN_RECORDER_BATCH_SIZE),
        # A batch that is not full is written after this long: task runs show their latest
        # state in the API and UI at most a second late (an int: Prefect truncates it).
        "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": str(
            TASK_RUN_RECORDER_FLUSH_SECONDS
        ),
        # A message whose handler hit "database is locked" is retried after a back-off rather
        # than three times at once and then dead-lettered: no Completed event was lost to the
        # automations (crash detection, the retraining trigger) in the bursts measured.
        "PREFECT_MESSAGING_BROKER": BROKER,
    }
