"""Prefect's in-memory message broker with patient retries: the local stack's server on SQLite.

Selected by ``PREFECT_MESSAGING_BROKER=infra.prefect_broker`` (Prefect's setting for a broker
module; ``infra.prefect_sqlite`` sets it). Everything is Prefect's own in-memory broker
(``prefect.server.utilities.messaging.memory``) except what a consumer does when its handler
fails. Prefect's retries a message at once, at most three times, then moves it to the dead-letter
folder. On SQLite a failure is usually "database is locked": the trigger service's
read-then-write transaction lost the write lock to another connection, which SQLite reports at
once rather than after its busy timeout, and three immediate retries land in the same burst of
writes. A dead-lettered ``prefect.flow-run.Completed`` event is one the automations never see
(the crash detection, the retraining trigger). Here a failed message is retried after a
back-off that doubles from a quarter of a second, up to ``RETRIES`` times (about 2 minutes in
all), without holding up the consumer's other messages.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from prefect.logging import get_logger
from prefect.server.utilities.messaging import MessageHandler, StopConsumer
from prefect.server.utilities.messaging.memory import (  # the rest of the broker, unchanged
    Cache,
    MemoryMessage,
    Publisher,
    Subscription,
    Topic,
    break_topic,
    ephemeral_subscription,
    update_metric,
)
from prefect.server.utilities.messaging.memory import Consumer as MemoryConsumer

__all__ = [
    "Cache",
    "Consumer",
    "Publisher",
    "Subscription",
    "Topic",
    "break_topic",
    "ephemeral_subscription",
]

logger = get_logger(__name__)

RETRIES = 10
"""Tries after the first before a message goes to the dead-letter folder (Prefect's: 3)."""
FIRST_DELAY_S = 0.25
MAX_DELAY_S = 30.0


def retry_delay(retries_so_far: int) -> float:
    """Seconds before the next try of a message that has failed ``retries_so_far + 1`` times
    (before jitter)."""
    return min(FIRST_DELAY_S * 2**retries_so_far, MAX_DELAY_S)


def jittered(delay: float) -> float:
    """``delay`` spread over 0.75-1.25 of itself, so messages that failed in one burst of
    writes do not all come back in the same instant."""
    return delay * random.uniform(0.75, 1.25)


class Consumer(MemoryConsumer):
    """Prefect's in-memory consumer, retrying a failed message later instead of at once.

    The retry runs in a task of its own: handing the message back to the subscription's retry
    queue would leave it there until the next new message wakes the consumer's loops.
    """

    def __init__(self, topic: str, subscription: Subscription | None = None, **kwargs: Any):
        super().__init__(topic, subscription, **kwargs)
        self.subscription.max_retries = max(self.subscription.max_retries, RETRIES)
        self._waiting: set[asyncio.Task] = set()

    async def _consume_loop(self, handler: MessageHandler) -> None:
        while True:
            message = await self.subscription.get()
            try:
                await handler(message)
                await update_metric(self.topic.name, "consumed")
            except StopConsumer as stop:
                if not stop.ack:
                    await self.subscription.retry(message)
                raise
            except Exception as error:
                self._retry_later(handler, message, error)

    def _retry_later(
        self, handler: MessageHandler, message: MemoryMessage, error: Exception
    ) -> None:
        delay = jittered(retry_delay(message.retry_count))
        logger.warning(
            "A %s message failed (%s: %s); try %d of %d in %.2f s",
            self.topic.name,
            type(error).__name__,
            str(error).splitlines()[0][:200] if str(error) else "",
            message.retry_count + 2,
            self.subscription.max_retries + 1,
            delay,
        )
        task = asyncio.create_task(self._retry_after(handler, message, delay))
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _retry_after(
        self, handler: MessageHandler, message: MemoryMessage, delay: float
    ) -> None:
        await asyncio.sleep(delay)
        message.retry_count += 1
        try:
            await handler(message)
            await update_metric(self.topic.name, "consumed")
        except StopConsumer as stop:  # the consumer is stopping
            if not stop.ack:  # not handled: back to its subscription, for whoever consumes next
                await self.subscription.retry(message)
        except Exception as error:
            if message.retry_count >= self.subscription.max_retries:
                logger.error(
                    "A %s message failed %d times; moving it to the dead-letter folder",
                    self.topic.name,
                    message.retry_count + 1,
                )
                await self.subscription.send_to_dead_letter_queue(message)
            else:
                self._retry_later(handler, message, error)

    async def cleanup(self) -> None:
        """Stop the retries still waiting, then unsubscribe as Prefect's consumer does.

        Their messages end here, as everything an in-memory broker holds ends with its server.
        """
        waiting = list(self._waiting)
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        await super().cleanup()
