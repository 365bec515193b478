"""Loading a pipeline model from the tracking store natively, checked where a crash is harmless.

``mlflow.pyfunc.load_model`` runs whatever code a version holds (a pickle's ``__setstate__``);
the pipeline and serving instead read a pipeline model's files (:mod:`mlops.model_files`), so a
version registered by someone else (a pickle, files outside the tracking store) is refused
without running anything of it. Every model is first loaded in a child process
(:mod:`mlops.model_check`), the one this pipeline run trained too (its files came back from the
artifact store): a family's parser may abort the process on a damaged model file rather than
raise.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.model_check import ModelCheckFailed, ModelCheckLimits, check_in_child
from prefect_mlops.mlops.model_files import (
    ModelFilesError,
    PipelineModel,
    model_files,
    read_pipeline_model,
)
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.model_registry.registry import ModelLoadError, download_model

logger = logging.getLogger(__name__)

_VERSION_URI = re.compile(r"models:/(?P<name>.+)/(?P<version>\d+)")


def model_check_limits(settings: Settings) -> ModelCheckLimits:
    """Limits of the child process that checks a model before it is loaded, from settings."""
    return ModelCheckLimits(settings.model_check_timeout_s, settings.model_check_memory_mb)


def load_pipeline_model(
    client: MlflowClient,
    model_uri: str,
    tracking_uri: str,
    check: ModelCheckLimits | None = ModelCheckLimits(),
) -> PipelineModel:
    """Download a model (``models:/NAME/VERSION``, ``models:/NAME@alias`` or ``models:/m-...``)
    from the tracking store, check it in a child process, and load it here.

    Args:
        client: Registry client.
        model_uri: The model.
        tracking_uri: The tracking store the client talks to.
        check: Limits of the child process's check. None reads the files here unchecked (a
            damaged model file can then crash this process).

    Raises:
        ModelLoadError: when it does not exist, is not a pipeline model, lies outside the
            tracking store, or fails its check.
    """
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        folder = download_model(client, model_uri, tmp, tracking_uri)
        try:
            model_files(folder, model_uri)
            seconds = _checked(folder, model_uri, check) if check is not None else None
            return read_pipeline_model(folder, model_uri, seconds)
        except ModelFilesError as error:
            raise ModelLoadError(str(error)) from None


def _checked(folder: Path, model_uri: str, limits: ModelCheckLimits) -> float:
    try:
        seconds = check_in_child(folder, model_uri, limits)
    except ModelCheckFailed as error:
        raise ModelLoadError(
            f"{describe(model_uri)} cannot be loaded: {error}. It was refused before this "
            "process loaded it; register a good version and point the alias at it."
        ) from None
    logger.info("Checked %s in a child process in %.2f s", model_uri, seconds)
    return seconds


def describe(model_uri: str) -> str:
    """``fraud-detector version 3 (models:/fraud-detector/3)``, or the URI itself."""
    found = _VERSION_URI.fullmatch(model_uri)
    if found is None:
        return model_uri
    return f"{found['name']} version {found['version']} ({model_uri})"


@dataclass(frozen=True)
class ModelStore:
    """Where models are loaded from: a registry client, its tracking URI, the check's limits."""

    client: MlflowClient
    tracking_uri: str
    check: ModelCheckLimits = ModelCheckLimits()  # noqa: RUF009 - frozen, never mutated

    def load(self, model_uri: str) -> PipelineModel:
        """The model at ``model_uri``, checked in a child process first."""
        return load_pipeline_model(self.client, model_uri, self.tracking_uri, self.check)
