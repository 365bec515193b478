"""The artifact store: how it is opened, its folder layout, and the check that it takes writes.

Everything the pipeline writes outside MLflow goes under one root URL
(``MLOPS_ARTIFACT_STORE``, default ``<MLOPS_HOME>/artifacts``), opened with fsspec and the
storage options in ``MLOPS_ARTIFACT_STORE_OPTIONS`` (a JSON object: credentials, endpoint, as
``data.storage_options`` are for a source). The layout, each folder named once here:

- ``datasets/<use case>/<version>/``: a preprocessed dataset version (:mod:`mlops.dataset`),
  with the data gate's files beside it: ``expectations/`` (suites derived from it as a
  reference) and ``data-gate/<suite>/`` (its validation result, report and Data Docs), and
  ``scores/<split>/<key>.npz``: a model's scores on a split, saved by evaluation and read by
  the model gate (:mod:`mlops.scores`).
- ``inference-log/``: the serving instances' Parquet inference log (:mod:`serving.log_sinks`).
- ``feedback/<model>/``: delayed labels, CSV or Parquet files of ``request_id``, ``row``, ``label``.
- ``monitoring/<model>/last-event.json``: the drift monitor's last event (its cooldown).
- ``training/<run>/``: scratch files of one training run (validation curves from the workers).
- ``predictions/<model>/<version>/<batch>/``: one batch scoring run's output, ``part-*.parquet``
  (:mod:`serving.batch`).

Where does a new artifact-store backend go? Here: :func:`open_url` is the one place a URL of
the store is turned into a file system, so a backend fsspec knows (``s3://``, ``gs://``,
``abfs://``, or one registered with ``fsspec.register_implementation``) needs only its package
installed and its options set; anything else it needs (a different way to open, a writability
probe of its own) belongs in this module.
"""

from __future__ import annotations

import getpass
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.spec import AbstractFileSystem

from .errors import StorageError
from .settings import Settings, get_settings

DATASETS = "datasets"
INFERENCE_LOG = "inference-log"
FEEDBACK = "feedback"
MONITORING = "monitoring"
TRAINING = "training"
PREDICTIONS = "predictions"
LAST_EVENT = "last-event.json"
EXPECTATIONS = "expectations"
DATA_GATE = "data-gate"
SCORES = "scores"


def open_url(url: str, options: Mapping[str, Any] | None = None) -> tuple[AbstractFileSystem, str]:
    """The file system holding ``url`` and the path on it: the one place a URL is opened.

    Args:
        url: A local path or any fsspec URL.
        options: fsspec storage options; None: the artifact store's when ``url`` is on the
            store's file system (same protocol), else none.

    Returns:
        The file system and the path of ``url`` on it.
    """
    chosen = store_options(url) if options is None else options
    return fsspec.core.url_to_fs(url, **chosen)


def write_text(url: str, text: str, options: Mapping[str, Any] | None = None) -> None:
    """Write ``text`` to the file ``url``, creating its folder first.

    Args:
        url: A local path or any fsspec URL.
        text: The file's content.
        options: fsspec storage options (None: as :func:`open_url` chooses).
    """
    fs, path = open_url(url, options)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "w") as handle:
        handle.write(text)


def store_options(url: str, settings: Settings | None = None) -> dict[str, Any]:
    """The artifact store's storage options when ``url`` uses the store's protocol, else none."""
    settings = settings or get_settings()
    same = protocol(url) == protocol(settings.resolved_artifact_store)
    return dict(settings.artifact_store_options) if same else {}


def protocol(url: str) -> str:
    """The fsspec protocol of a URL (``file`` for a plain path)."""
    name = fsspec.core.split_protocol(url)[0]
    return "file" if name in (None, "file", "local") else name


@dataclass(frozen=True)
class ArtifactStore:
    """The artifact store's root and options, and where each kind of artifact goes under it."""

    root: str
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> ArtifactStore:
        """The store the settings name (``MLOPS_ARTIFACT_STORE[_OPTIONS]``)."""
        settings = settings or get_settings()
        return cls(settings.resolved_artifact_store, dict(settings.artifact_store_options))

    def url(self, *parts: str) -> str:
        """The URL of ``parts`` joined under the root."""
        return "/".join([self.root.rstrip("/"), *parts])

    def open(self, url: str) -> tuple[AbstractFileSystem, str]:
        """The file system and path of ``url``, a location in this store."""
        return open_url(url, self.options)

    def dataset_uri(self, use_case: str, version: str) -> str:
        """Folder of one preprocessed dataset version."""
        return self.url(DATASETS, use_case, version)

    @property
    def inference_log_root(self) -> str:
        """Root of the Parquet inference log (one folder per model under it)."""
        return self.url(INFERENCE_LOG)

    def feedback_folder(self, model: str) -> str:
        """Where delayed labels of ``model`` are dropped."""
        return self.url(FEEDBACK, model)

    def last_event_uri(self, model: str) -> str:
        """The drift monitor's record of the last event it emitted for ``model``."""
        return self.url(MONITORING, model, LAST_EVENT)

    def predictions_folder(self, model: str, version: str, batch: str) -> str:
        """Where one batch scoring run of ``model`` version ``version`` writes its parts."""
        return self.url(PREDICTIONS, model, version, batch)

    def training_scratch(self, run: str | None = None) -> str:
        """A folder of scratch files for one training run (a new one when ``run`` is None)."""
        return self.url(TRAINING, run or uuid.uuid4().hex)


def staging_url(final: str) -> str:
    """A hidden sibling of ``final`` to write into before it is moved into place, so that no
    reader (and no store listing) sees a half-written folder or file."""
    parent, _, name = final.rstrip("/").rpartition("/")
    hidden = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    return f"{parent}/{hidden}" if parent else hidden


def artifact_store(settings: Settings | None = None) -> ArtifactStore:
    """The artifact store of these settings (default: the process's)."""
    return ArtifactStore.from_settings(settings)


# ---------------------------------------------------------------- checks before anything runs


def check_writable(url: str, what: str, options: Mapping[str, Any] | None = None) -> None:
    """Create ``url`` if needed, then write and remove a small probe file in it.

    A store that cannot be written is a problem of the environment, not of the input: it
    stops a command (exit 1) before any data is read or any service started.

    Args:
        url: A local folder or any fsspec URL.
        what: What the store is and which setting chose it, for the message.
        options: fsspec storage options (None: as :func:`open_url` chooses).

    Raises:
        StorageError: naming the store, the error and what to do.
    """
    fs, path = open_url(url, options)
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
    store = artifact_store(settings)
    check_writable(store.root, f"The artifact store ({chosen})", store.options)
