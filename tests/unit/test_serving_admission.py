"""What /invocations lets in: bodies read under a deadline and limits, and the event loop's lag."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from prefect_mlops.serving.admission import BodyMemory, BodyRefused, LoopLag, read_body


def sender(*chunks: bytes, then_wait: bool = False):
    """An ASGI ``receive`` that hands out ``chunks`` (the last one ends the body unless
    ``then_wait``: then it waits, as a client that stopped sending)."""
    queue = list(chunks)

    async def receive() -> dict:
        if queue:
            chunk = queue.pop(0)
            more = bool(queue) or then_wait
            return {"type": "http.request", "body": chunk, "more_body": more}
        await anyio.sleep_forever()

    return receive


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.anyio
async def test_a_body_in_chunks_is_joined_and_its_bytes_stay_held_until_given_back():
    memory = BodyMemory(budget=100)
    body = await read_body(sender(b"abc", b"de", b"f"), limit=10, timeout_s=5, memory=memory)
    assert body == b"abcdef" and memory.held == 6
    memory.give_back(len(body))
    assert memory.held == 0


@pytest.mark.anyio
async def test_a_body_over_the_limit_is_refused_as_soon_as_it_passes_it():
    memory = BodyMemory(budget=1000)
    endless = sender(*([b"x" * 40] * 3), then_wait=True)  # never ends: refused on the 3rd chunk
    with pytest.raises(BodyRefused) as refused:
        await read_body(endless, limit=100, timeout_s=5, memory=memory)
    assert refused.value.status == 413 and "limit is 100" in str(refused.value)
    assert memory.held == 0  # what it had read is given back


@pytest.mark.anyio
async def test_a_client_that_stops_sending_gets_408_and_holds_nothing():
    memory = BodyMemory(budget=1000)
    with pytest.raises(BodyRefused) as refused:
        await read_body(sender(b"{", then_wait=True), limit=100, timeout_s=0.05, memory=memory)
    assert refused.value.status == 408 and refused.value.code == "REQUEST_TIMEOUT"
    assert "1 bytes came" in str(refused.value) and "MLOPS_SERVING_BODY_TIMEOUT_S" in str(
        refused.value
    )
    assert memory.held == 0


@pytest.mark.anyio
async def test_bodies_beyond_the_process_budget_get_503_and_a_gone_client_400():
    memory = BodyMemory(budget=10)
    memory.take(8)  # another request holds 8 bytes
    with pytest.raises(BodyRefused) as refused:
        await read_body(sender(b"abcd"), limit=100, timeout_s=5, memory=memory)
    assert refused.value.status == 503 and "MLOPS_SERVING_MAX_BODY_MEMORY_BYTES" in str(
        refused.value
    )
    assert memory.held == 8

    async def gone() -> dict:
        return {"type": "http.disconnect"}

    with pytest.raises(BodyRefused) as closed:
        await read_body(gone, limit=100, timeout_s=5, memory=memory)
    assert closed.value.status == 400 and memory.held == 8


def hold_the_loop(cpu_seconds: float) -> None:
    """Keep the event loop's thread computing for ``cpu_seconds`` of its own CPU time."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


async def wait_for(condition, deadline_s: float = 10) -> bool:
    deadline = time.monotonic() + deadline_s
    while not condition() and time.monotonic() < deadline:
        await anyio.sleep(0.001)
    return condition()


@pytest.mark.anyio
@pytest.mark.parametrize("block", ["computing", "a blocking call"])
async def test_a_loop_held_by_its_own_doing_refuses_then_recovers(block):
    lag = LoopLag(budget_s=0.05, probe_s=0.005, min_turn_requests=0)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lag.watch)
        await anyio.sleep(0.02)
        if block == "computing":
            hold_the_loop(0.2)  # four times the budget, as a long turn of requests would
        else:
            time.sleep(0.2)  # synchronous I/O on the loop
        assert lag.refuses()  # the rest of this turn
        assert await wait_for(lambda: lag.lag_s >= 0.05)  # the timer saw it: a new turn
        assert await wait_for(lambda: not lag.refuses())  # caught up: requests are let in again
        tasks.cancel_scope.cancel()
    assert not LoopLag(budget_s=0).refuses()  # a budget of 0 never refuses


@pytest.mark.anyio
async def test_a_long_turn_of_the_loop_refuses_its_last_requests():
    """Requests of one turn run one after the other: once the turn has run for half the
    budget, the ones still to come are refused, before the timer can measure anything; but
    never the first few of a turn (with few waiting, refusing shortens no one's wait)."""
    lag = LoopLag(budget_s=0.05, probe_s=0.005, min_turn_requests=3)
    assert not lag.refuses()  # not watching yet: nothing is refused
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lag.watch)
        await anyio.sleep(0.02)
        first = lag.refuses()
        hold_the_loop(0.04)  # the turn's first requests take 40 ms of CPU: over half the budget
        after = [lag.refuses() for _ in range(4)]
        tasks.cancel_scope.cancel()
    assert (first, after) == (False, [False, False, True, True])  # 3 a turn, then refused
    assert not lag.refuses()  # stopped watching


CONTENDED_LOOP = """
import json, os, subprocess, sys, time
import anyio
from prefect_mlops.serving.admission import LoopLag

cpu = min(os.sched_getaffinity(0))
os.sched_setaffinity(0, {cpu})
spin = f"import os, time\\nos.sched_setaffinity(0, {{{cpu}}})\\nend = time.time() + 90\\nwhile time.time() < end: pass"
spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
os.nice(19)  # the spinners, at normal priority, take the CPU whenever they want it
seen = []

async def main():
    lag = LoopLag(budget_s=0.01, probe_s=0.002, min_turn_requests=0)
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lag.watch)
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and sum(s[0] > 0.02 for s in seen) < 3:
            await anyio.sleep(0.002)
            seen.append((lag.lag_s, lag.own_lag_s, lag.refuses()))
        tasks.cancel_scope.cancel()

try:
    anyio.run(main)
finally:
    for spinner in spinners:
        spinner.kill()
        spinner.wait()
print(json.dumps(seen))
"""


@pytest.mark.skipif(
    not os.path.exists("/proc/thread-self/schedstat"), reason="Linux counts CPU waits"
)
def test_a_loop_late_only_because_others_hold_the_cpu_does_not_shed():
    """A loop that waits for a CPU held by other processes: late, but not by its own doing, so
    refusing requests would not help (a child process at low priority beside two spinners)."""
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CONTENDED_LOOP],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its spinners too are stopped if it runs out of time
    )
    try:
        stdout, stderr = child.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    done = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    assert done.returncode == 0, done.stderr
    contended = [(lag, own, late) for lag, own, late in json.loads(done.stdout) if lag > 0.02]
    assert len(contended) >= 3, "the spinners never made the loop late"
    assert not any(late for *_, late in contended), contended
    assert max(own for _, own, _ in contended) < 0.01  # the wait for a CPU was subtracted
