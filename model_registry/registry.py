"""Everything that writes models to MLflow: logging the pyfunc, versions, tags and aliases.

Aliases only (``champion``, ``challenger``, ``previous``), never the deprecated stages.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import lightgbm as lgb
import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from pydantic import BaseModel

import mlops
from mlops.dataset import DatasetRef
from mlops.errors import MlopsError
from mlops.prediction import predict_frame
from mlops.pyfunc import BOOSTER_ARTIFACT, INFO_ARTIFACT, SPEC_ARTIFACT

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"


class ModelLoadError(MlopsError):
    """The model named does not exist, or is not a pipeline model."""


class ModelReferenceError(ModelLoadError):
    """A model was asked for by path or non-registry URI: only the registry is trusted."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class RegisteredVersion(BaseModel):
    """A model version and the alias it was given."""

    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str


def _requirements() -> list[str]:
    import importlib.metadata as md

    names = ["lightgbm", "pandas", "numpy", "pyarrow", "pydantic", "scikit-learn"]
    return [f"{n}=={md.version(n)}" for n in names]


def log_pipeline_model(
    run_id: str, booster: lgb.Booster, dataset: DatasetRef, input_example: pd.DataFrame
) -> str:
    """Log the booster + feature transform as an MLflow pyfunc with signature and input example.

    The model is defined by code (MLflow's models-from-code, no pickle), and the feature code
    (the ``mlops`` package) travels with it, so a version keeps predicting the way it was
    validated even after the code changes.

    Returns:
        The logged model's URI (``models:/m-...``).
    """
    output = predict_frame(
        booster, dataset.feature_spec, dataset.task, dataset.classes, input_example
    )
    signature = infer_signature(input_example, output)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        booster.save_model(folder / "model.txt")
        (folder / "feature_spec.json").write_text(dataset.feature_spec.model_dump_json(indent=2))
        info = {"task": dataset.task, "classes": dataset.classes, "target": dataset.target}
        (folder / "model_info.json").write_text(json.dumps(info, indent=2))
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(mlops.__file__).parent / "model_code.py"),
                artifacts={
                    BOOSTER_ARTIFACT: str(folder / "model.txt"),
                    SPEC_ARTIFACT: str(folder / "feature_spec.json"),
                    INFO_ARTIFACT: str(folder / "model_info.json"),
                },
                code_paths=[str(Path(mlops.__file__).parent)],
                signature=signature,
                input_example=input_example,
                pip_requirements=_requirements(),
            )
    return logged.model_uri


def version_by_alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The model version holding ``alias``, or None (also when the model does not exist)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version number holding ``alias``, or None."""
    found = version_by_alias(client, name, alias)
    return str(found.version) if found is not None else None


def ensure_registered_model(client: MlflowClient, name: str, description: str = "") -> None:
    """Create the registered model unless it exists; safe when many pipelines race to create it."""
    try:
        client.get_registered_model(name)
        return
    except MlflowException:
        pass
    try:
        client.create_registered_model(name, description=description or None)
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":  # another run created it first
            raise


def register_model_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    tags: Mapping[str, str],
    description: str = "",
) -> RegisteredVersion:
    """Register a new version as ``challenger``.

    Only the model gate makes a version ``champion`` (``model_registry.promotion``). If anything
    fails after the version was created, the version is deleted, so the registry never holds a
    half-registered model.

    Returns:
        The version and its alias.
    """
    ensure_registered_model(client, name, description)
    # A logged model's URI is models:/<model id>; a tracking server wants that id named too.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    created = client.create_model_version(
        name, model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
    )
    version = str(created.version)
    try:
        client.set_registered_model_alias(name, CHALLENGER, version)
    except Exception:
        logger.error("Registering %s v%s failed; removing the version", name, version)
        client.delete_model_version(name, version)
        raise
    logger.info("Registered %s version %s as '%s'", name, version, CHALLENGER)
    return RegisteredVersion(
        name=name, version=version, alias=CHALLENGER, run_id=run_id, model_uri=model_uri
    )


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``NAME``, ``NAME@alias``, ``NAME/version`` or ``models:/...`` -> (name, alias, version).

    A bare name means its ``champion``. Anything else (a file path, a pickle, a ``runs:/``,
    ``file:`` or ``s3:`` URI) is refused before anything is read: models are loaded only from
    the registry, and only in LightGBM's native format.

    Raises:
        ModelReferenceError: for a path or a URI outside the registry.
    """
    body = reference.removeprefix("models:/")
    name, alias, version = body, CHAMPION, None
    if "@" in body:
        name, alias = body.split("@", 1)
    elif "/" in body:
        name, version, alias = *body.split("/", 1), None
    valid = (
        _NAME.fullmatch(name)
        and (alias is None or _ALIAS.fullmatch(alias))
        and (version is None or version.isdigit())
        and not name.lower().endswith((".pkl", ".pickle", ".joblib", ".cloudpickle"))
    )
    if not valid:
        raise ModelReferenceError(
            f"'{reference}' is not a registered model. Models are loaded only from the MLflow "
            "registry, in LightGBM's native format: give NAME, NAME@alias, NAME/version or "
            "models:/NAME@alias. Files, pickles and other URIs (runs:/, file:, s3:) are refused."
        )
    return name, alias, version


def resolve_version(client: MlflowClient, reference: str) -> tuple[str, str, str]:
    """The (name, version, run id) a reference points at now.

    Raises:
        ModelLoadError: when the model, alias or version does not exist.
    """
    name, alias, version = parse_reference(reference)
    try:
        found = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as error:
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise ModelLoadError(
            f"Nothing at '{reference}': model '{name}' has no {what} in the registry "
            f"({error.error_code})."
        ) from None
    return found.name, str(found.version), found.run_id or ""


def download_version(
    client: MlflowClient, name: str, version: str, destination: str, tracking_uri: str
) -> Path:
    """A model version's files, found through ``client`` rather than MLflow's global registry URI.

    Returns:
        The local folder holding the version's files.
    """
    source = client.get_model_version_download_uri(name, version)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=destination, tracking_uri=tracking_uri
    )
    return Path(local)
