"""Locks that hold across processes and machines: Prefect global concurrency limits of one slot.

Every process of the pipeline already talks to one Prefect API, so a limit with a single slot
there is a lock all of them share, with no extra service. Slots are leases: if the holder dies,
the slot frees itself when the lease runs out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

logger = logging.getLogger(__name__)


def lock_name(*parts: str) -> str:
    """A limit name from parts: lowercase letters, digits and dashes."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in text)[:120]


def ensure_lock(name: str) -> None:
    """Create the one-slot limit ``name`` if it does not exist yet (safe to race)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        # Another process may create it between our read and our write.
        with suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


@contextmanager
def exclusive(name: str, timeout_seconds: float = 120, lease_seconds: float = 60) -> Iterator[None]:
    """Hold the lock ``name`` (shown under Concurrency in the Prefect UI) for the block.

    Raises:
        TimeoutError: if the lock is not free within ``timeout_seconds``.
    """
    ensure_lock(name)
    logger.debug("Waiting for lock %s", name)
    with concurrency(
        name, occupy=1, timeout_seconds=timeout_seconds, lease_duration=lease_seconds, strict=True
    ):
        yield
