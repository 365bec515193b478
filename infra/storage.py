"""Checks on the stores the pipeline writes to, made before anything runs.

A store that cannot be written is a problem of the environment, not of the input: it stops a
command with :class:`~mlops.errors.StorageError` (exit 1) naming the store and what to do,
before any data is read or any service started.
"""

from __future__ import annotations

import getpass
import uuid

import fsspec

from mlops.errors import StorageError
from mlops.settings import Settings


def check_writable(url: str, what: str) -> None:
    """Create ``url`` if needed, then write and remove a small probe file in it.

    Args:
        url: A local folder or any fsspec URL.
        what: What the store is and which setting chose it, for the message.

    Raises:
        StorageError: naming the store, the error and what to do.
    """
    fs, path = fsspec.core.url_to_fs(url)
    probe = f"{path.rstrip('/')}/.mlops-write-check-{uuid.uuid4().hex}"
    try:
        fs.makedirs(path, exist_ok=True)
        fs.pipe_file(probe, b"")
        fs.rm_file(probe)
    except OSError as error:
        local = "://" not in url or url.startswith("file://")
        remedy = (
            f"Make it writable by user '{getpass.getuser()}' (e.g. `chmod -R u+w {path}`), "
            "or point it at a writable folder"
            if local
            else "Check the credentials and permissions this process has on it, "
            "or point it at a store this process can write"
        )
        raise StorageError(
            f"{what}, {url}, cannot be written: {type(error).__name__}: "
            f"{error.strerror or error}. Nothing was run. {remedy}."
        ) from None


def check_artifact_store(settings: Settings) -> None:
    """The artifact store (datasets, reports, the inference log) accepts writes.

    Raises:
        StorageError: naming the store, the setting that chose it and what to do.
    """
    chosen = "MLOPS_ARTIFACT_STORE" if settings.artifact_store else "the default under MLOPS_HOME"
    check_writable(settings.resolved_artifact_store, f"The artifact store ({chosen})")
