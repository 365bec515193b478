"""Loading a registered model for serving: download once, check in a child process, then load.

A version's files are downloaded from the registry into a temporary folder; a child process
reads and checks them (:mod:`mlops.model_check`), because a model family's library can crash
the process that parses a damaged model file; only then does this process read the same files
natively with the family's predictor (:mod:`model_registry.loading`).
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.model_check import ModelCheckLimits
from prefect_mlops.model_registry.loading import load_pipeline_model
from prefect_mlops.model_registry.registry import ModelLoadError, resolve_version

from .served_model import ServedModel

__all__ = ["ModelLoadError", "ServedModel", "load_served_model", "resolve_version"]

DEFAULT_CHECK = ModelCheckLimits()


def load_served_model(
    client: MlflowClient,
    reference: str,
    tracking_uri: str,
    check: ModelCheckLimits | None = DEFAULT_CHECK,
) -> ServedModel:
    """Download a model version's files, check them in a child process, and load them here.

    Args:
        client: the registry client.
        reference: ``NAME``, ``NAME@alias``, ``NAME/version`` or a ``models:/`` URI.
        tracking_uri: where the version's artifacts are found.
        check: limits of the child process's check; None reads the files here unchecked
            (a damaged model file can then crash this process).

    Raises:
        ModelLoadError: when it does not exist, is not a pipeline model, or fails its check.
    """
    name, version, run_id = resolve_version(client, reference)
    model = load_pipeline_model(client, f"models:/{name}/{version}", tracking_uri, check)
    return ServedModel(name, version, run_id, model)
