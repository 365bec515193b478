"""Hot swap: load the version an alias now points at beside the serving one, check it, swap.

Requests take the model reference once when they start, so those in flight finish on the
version they started with; the swap itself is one reference assignment. A new version that
fails to load or to predict its own input example is not swapped in: the old one keeps
serving and the error shows on ``/health`` and in the logs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import numpy as np

from .loader import ServedModel, resolve_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``swapped``, ``unchanged`` or ``failed``."""

    status: str
    version: str
    error: str | None = None


def check_model(model: ServedModel) -> None:
    """Predict the model's own input example; raise if it cannot or the output is wrong."""
    if model.input_example is None or model.input_example.empty:
        raise ValueError(f"{model.uri} has no input example to check it with")
    predictions = model.predict(model.input_example)
    if len(predictions) != len(model.input_example):
        raise ValueError(
            f"{model.uri} returned {len(predictions)} rows for {len(model.input_example)}"
        )
    numeric = predictions.select_dtypes("number")
    if not np.isfinite(numeric.to_numpy(dtype="float64")).all():
        raise ValueError(f"{model.uri} predicts non-finite values on its input example")


class ModelSwapper:
    """Keeps ``state.model`` on the version ``reference`` points at."""

    def __init__(self, state, reference: str, client_factory: Callable, loader: Callable) -> None:
        self.state = state
        self.reference = reference
        self.client_factory = client_factory
        self.loader = loader
        self._lock = anyio.Lock()

    async def reload(self) -> ReloadOutcome:
        """Swap to the version the reference points at now, if it differs and passes its check."""
        async with self._lock:
            current = self.state.model
            try:
                _, version, _ = await anyio.to_thread.run_sync(
                    resolve_version, self.client_factory(), self.reference
                )
                if current is not None and version == current.version:
                    return ReloadOutcome("unchanged", version)
                candidate = await anyio.to_thread.run_sync(self._load_and_check)
            except Exception as error:  # a broken version must never take the service down
                message = f"{type(error).__name__}: {error}"
                self.state.last_error = message
                if current is None:
                    logger.warning("No model to serve yet: %s", message)
                else:
                    logger.error("Not swapping from version %s: %s", current.version, message)
                return ReloadOutcome("failed", self.state.version, message)
            self.state.model = candidate  # in-flight requests keep their reference to the old one
            self.state.last_error = None
            logger.warning(
                "Swapped %s from version %s to %s",
                candidate.name,
                current.version if current else "(none)",
                candidate.version,
            )
            return ReloadOutcome("swapped", candidate.version)

    def _load_and_check(self) -> ServedModel:
        model = self.loader(self.client_factory(), self.reference)
        check_model(model)
        return model

    async def poll(self, every_s: float) -> None:
        """Reload every ``every_s`` seconds (the fallback when no one calls the admin endpoint)."""
        while True:
            await anyio.sleep(every_s)
            await self.reload()
