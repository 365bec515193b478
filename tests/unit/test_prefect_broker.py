"""The stack's message broker: a message whose handler fails is retried later, not dead-lettered.

Runs Prefect's own in-memory topics (what ``prefect server start`` uses), with the broker module
the stack selects (``PREFECT_MESSAGING_BROKER=infra.prefect_broker``).
"""

from __future__ import annotations

import itertools
import time

import anyio
import pytest
from prefect.server.utilities.messaging import BrokerModule

import prefect_mlops.infra.prefect_broker as broker
from prefect_mlops.infra.prefect_broker import Cache, Consumer, Publisher, retry_delay


@pytest.fixture
def anyio_backend():
    return "asyncio"


def test_it_is_a_broker_prefect_accepts():
    assert isinstance(broker, BrokerModule)


def test_the_back_off_doubles_and_is_capped():
    assert [retry_delay(n) for n in range(4)] == [0.25, 0.5, 1.0, 2.0]
    assert retry_delay(20) == broker.MAX_DELAY_S


@pytest.mark.anyio
async def test_a_message_that_fails_four_times_is_delivered_on_the_fifth(tmp_path):
    """Prefect's own consumer gives up after 3 immediate retries; this one waits and succeeds."""
    topic = f"test-{time.monotonic_ns()}"
    consumer = Consumer(topic)
    consumer.subscription.dead_letter_queue_path = tmp_path / "dlq"
    tries: list[float] = []
    done = anyio.Event()

    async def handler(message) -> None:
        tries.append(time.monotonic())
        if len(tries) <= 4:  # as a trigger's bucket write does while SQLite is busy
            raise RuntimeError("database is locked")
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(consumer.run, handler)
        async with Publisher(topic, Cache()) as publisher:
            await publisher.publish_data(b"flow-run.Completed", {"id": "1"})
        with anyio.fail_after(30):
            await done.wait()
        group.cancel_scope.cancel()
    await consumer.cleanup()
    assert not consumer._waiting  # no retry left behind
    waits = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert len(tries) == 5
    assert all(wait >= retry_delay(n) * 0.75 for n, wait in enumerate(waits))  # backed off
    assert not (tmp_path / "dlq").exists()  # nothing dead-lettered
