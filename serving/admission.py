"""What ``/invocations`` lets in: load shed on event-loop lag, bodies read under a deadline and limits.

- **Load shedding.** One process answers on one event loop. Under more traffic than it can
  score, requests wait for the loop and everyone's latency grows without bound (measured
  before this: 3.8 s p99 at 1,000 connections, no request refused). :class:`LoopLag` tells
  when the loop's current turn has run, by its own work, for more than half the latency
  budget; the requests after that point get 503 with ``Retry-After`` at once, before their
  body is read, which costs about a tenth of scoring a row. Turns stay short, and the
  requests accepted keep a wait near the budget.
- **Bodies.** A body is read as it streams in (:func:`read_body`): against the size limit as it
  arrives (413 as soon as it passes the limit, chunked or not), within a deadline (408 for a
  client too slow to send it), and against a budget of body bytes being read or scored by the
  whole process at once (503 beyond it). A request counts as in flight only once its body is
  in: a slow client holds no scoring slot. Bodies kept for the inference log after the answer
  count against the log's own cap (``MLOPS_INFERENCE_LOG_MAX_BUFFER_BYTES``), so memory stays
  bounded whatever the clients send and however long storage is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio

from .payload import PayloadError

LAG_PROBE_S = 0.01
"""How often the event loop's lag is measured (a timer that costs a few microseconds)."""


class LoopLag:
    """How long the event loop has been busy with its current turn, and how much of that is
    the service's own doing.

    A loop turn runs every request that arrived during the last one, one after the other, so
    under overload turns grow and the last requests of each wait the longest. A timer every
    ``probe_s`` marks where the loop got back to its timers; a request that finds the loop
    has been busy for more than half the budget past that timer's due time is refused, which
    bounds the work a turn accepts, and so the wait of the requests it serves, near the
    budget. How late the timer itself fires is kept for ``/metrics``.

    Refusing helps only when the lateness is the service's own and many requests wait:

    - other processes may hold the CPU while the loop is ready to run; refusing would serve
      fewer requests, as slowly. Linux counts the time a thread waited for a CPU
      (``schedstat``); that wait is taken off, so only the loop's own lateness is held against
      the budget (elsewhere all of it is).
    - a loop held up once (a reload, a garbage collection) with few requests waiting serves
      them faster than it could refuse them: the first ``min_turn_requests`` requests of a turn
      are always let in.
    """

    def __init__(
        self, budget_s: float, probe_s: float = LAG_PROBE_S, min_turn_requests: int = 8
    ) -> None:
        self.budget_s = budget_s
        """Refuse past this much of the loop's own lateness (0: never refuse)."""
        self.probe_s = probe_s
        self.min_turn_requests = min_turn_requests
        self.lag_s = 0.0
        """How late the timer fired last (for /metrics)."""
        self.own_lag_s = 0.0
        """That lateness less the time the loop's thread waited for a CPU meanwhile."""
        self._arrivals = 0
        """Requests of the current turn so far."""
        self._ran_at: float | None = None
        """When the timer last fired (None: not watching, nothing is refused)."""
        self._waited_then = 0.0
        self._waited: Callable[[], float] = lambda: 0.0

    def refuses(self) -> bool:
        """Whether the request arriving now is refused (a few clock reads when the loop is busy)."""
        if self.budget_s <= 0 or self._ran_at is None:
            return False
        if self._arrivals == 0:  # the first of this turn: count until the turn is over
            asyncio.get_running_loop().call_soon(self._turn_over)
        self._arrivals += 1
        if self._arrivals <= self.min_turn_requests:
            return False
        overdue = time.perf_counter() - self._ran_at - self.probe_s
        if overdue <= self.budget_s / 2:  # the usual case
            return False
        return overdue - (self._waited() - self._waited_then) > self.budget_s / 2

    def _turn_over(self) -> None:
        self._arrivals = 0

    async def watch(self) -> None:
        """Measure the lag until cancelled (a task of the service's lifespan, on the loop)."""
        with _cpu_wait_clock() as waited:
            self._waited = waited
            self._ran_at, self._waited_then = time.perf_counter(), waited()
            try:
                while True:
                    await anyio.sleep(self.probe_s)
                    now, wait = time.perf_counter(), waited()
                    self.lag_s = max(0.0, now - self._ran_at - self.probe_s)
                    self.own_lag_s = max(0.0, self.lag_s - (wait - self._waited_then))
                    self._ran_at, self._waited_then = now, wait
            finally:
                self._ran_at = None


@contextlib.contextmanager
def _cpu_wait_clock() -> Iterator[Callable[[], float]]:
    """A clock of the seconds this thread has waited for a CPU (always 0 where unknown)."""
    try:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # Linux: run, wait, slices
    except OSError:
        yield lambda: 0.0
        return
    try:
        yield lambda: int(os.pread(fd, 64, 0).split()[1]) / 1e9
    finally:
        os.close(fd)


@dataclass
class BodyMemory:
    """Bytes of request bodies the process holds at once (being received or scored)."""

    budget: int
    held: int = 0

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes.

        Raises:
            BodyRefused: 503 when the budget would be passed.
        """
        if self.held + size > self.budget:
            raise BodyRefused(
                503,
                f"The service holds {self.held} bytes of request bodies, its limit "
                f"(MLOPS_SERVING_MAX_BODY_MEMORY_BYTES) is {self.budget}; retry shortly.",
                "OVERLOADED",
            )
        self.held += size

    def give_back(self, size: int) -> None:
        """Release bytes taken with ``take``."""
        self.held -= size


class BodyRefused(PayloadError):
    """The body was not read to its end: the answer closes the connection."""


Receive = Callable[[], Awaitable[dict[str, Any]]]


async def read_body(receive: Receive, limit: int, timeout_s: float, memory: BodyMemory) -> bytes:
    """The request body, read as it streams in; its bytes stay taken from ``memory``.

    The caller gives ``len(body)`` back to ``memory`` when it is done with the body.

    Raises:
        BodyRefused: 408 when it is not in within ``timeout_s``, 413 as soon as it passes
            ``limit`` bytes, 503 when ``memory`` has no room, 400 when the client went away.
    """
    chunks: list[bytes] = []
    size = 0
    try:
        # asyncio's own timeout: the service runs on asyncio (uvicorn), and it costs half of
        # anyio.fail_after's 12 us on every request
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise BodyRefused(400, "The client closed the connection mid-body.", "CLOSED")
                chunk = message.get("body", b"")
                if size + len(chunk) > limit:
                    raise BodyRefused(
                        413, too_big(f"more than {limit}", limit), "PAYLOAD_TOO_LARGE"
                    )
                memory.take(len(chunk))
                size += len(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        memory.give_back(size)
        raise BodyRefused(
            408,
            f"The body did not arrive within {timeout_s:g} s ({size} bytes came); send it "
            "faster, or raise MLOPS_SERVING_BODY_TIMEOUT_S.",
            "REQUEST_TIMEOUT",
        ) from None
    except BaseException:
        memory.give_back(size)
        raise
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_big(size: str | int, limit: int) -> str:
    """The 413 message."""
    return f"The body has {size} bytes; the limit is {limit} (MLOPS_SERVING_MAX_BODY_BYTES)."
