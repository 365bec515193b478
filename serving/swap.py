"""Hot swap: load the version an alias now points at beside the serving one, check it, swap.

Requests take the model reference once when they start, so those in flight finish on the
version they started with; the swap itself is one reference assignment. A candidate is first
loaded and checked in a child process (:mod:`mlops.model_check`), since a damaged model file
can crash the process that parses it, and checked again here once loaded. A new version that
fails either check is not swapped in: the old one keeps serving and the error shows on
``/health`` and in the logs. The alias poll does not try a version it refused again (a
registered version's files never change); ``POST /admin/reload`` always does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio

from prefect_mlops.mlops.model_files import check_predictions

from .loader import ModelLoadError, ServedModel, resolve_version

logger = logging.getLogger(__name__)

__all__ = ["ModelSwapper", "ReloadOutcome"]


@dataclass(frozen=True)
class ReloadOutcome:
    """What a reload did: ``swapped``, ``unchanged`` or ``failed``."""

    status: str
    version: str
    error: str | None = None


class ModelSwapper:
    """Keeps ``state.model`` on the version ``reference`` points at.

    ``loader(client, reference)`` loads one version (``NAME/version``) and raises when it cannot;
    ``client_factory()`` gives a registry client.
    """

    def __init__(
        self,
        state: Any,
        reference: str,
        client_factory: Callable[[], Any],
        loader: Callable[[Any, str], ServedModel],
    ) -> None:
        self.state = state
        self.reference = reference
        self.client_factory = client_factory
        self.loader = loader
        self._lock = anyio.Lock()
        self._refused: tuple[str, str] | None = None
        """The last version refused and why: the poll does not try it again."""

    def load_first(self) -> None:
        """Load the version the reference points at now, at start-up, before serving.

        On failure ``state.last_error`` says why (``/health`` shows it) and the error is raised.

        Raises:
            ModelLoadError: the version does not exist or fails its check; or what the registry
                raised.
        """
        version = None
        try:
            name, version, _ = resolve_version(self.client_factory(), self.reference)
            self.state.model = self._load_and_check(name, version)
        except Exception as error:  # the caller reports it (and exits, or waits)
            self._remember(version, error)
            raise
        self.state.last_error = None

    async def reload(self, retry_refused: bool = True) -> ReloadOutcome:
        """Swap to the version the reference points at now, if it differs and passes its checks.

        Args:
            retry_refused: check the version again even if it was refused before.
        """
        async with self._lock:
            current = self.state.model
            version = None
            try:
                name, version, _ = await anyio.to_thread.run_sync(
                    resolve_version, self.client_factory(), self.reference
                )
                if current is not None and version == current.version:
                    return ReloadOutcome("unchanged", version)
                if not retry_refused and self._refused and self._refused[0] == version:
                    return ReloadOutcome("failed", self.state.version, self._refused[1])
                candidate = await anyio.to_thread.run_sync(self._load_and_check, name, version)
            except Exception as error:  # a broken version must never take the service down
                message = self._remember(version, error)
                if current is None:
                    logger.error("No model to serve: %s", message)
                else:
                    logger.error("Not swapping from version %s: %s", current.version, message)
                return ReloadOutcome("failed", self.state.version, message)
            self.state.model = candidate  # in-flight requests keep their reference to the old one
            self.state.last_error = None
            self._refused = None
            logger.warning(
                "Swapped %s from version %s to %s (checked in a child process in %s s)",
                candidate.name,
                current.version if current else "(none)",
                candidate.version,
                f"{candidate.check_s:.2f}" if candidate.check_s is not None else "-",
            )
            return ReloadOutcome("swapped", candidate.version)

    def _load_and_check(self, name: str, version: str) -> ServedModel:
        served = self.loader(self.client_factory(), f"{name}/{version}")
        check_predictions(served.model)  # again, here: the files the child checked, as loaded
        return served

    def _remember(self, version: str | None, error: Exception) -> str:
        """Record a failed load for ``/health`` and the poll; returns the message."""
        message = f"{type(error).__name__}: {error}"
        self.state.last_error = message
        if version is not None and isinstance(error, ModelLoadError):  # not a registry hiccup
            self._refused = (version, message)
        return message

    async def poll(self, every_s: float) -> None:
        """Reload every ``every_s`` seconds (the fallback when no one calls the admin endpoint)."""
        while True:
            await anyio.sleep(every_s)
            await self.reload(retry_refused=False)
