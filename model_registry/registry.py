"""Everything that writes models to MLflow: logging the pyfunc, versions, tags and aliases.

Aliases only (``champion``, ``challenger``, ``previous``), never the deprecated stages.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import AnyType
from pydantic import BaseModel

from prefect_mlops import mlops
from prefect_mlops.mlops.errors import EnvironmentFailure, MlopsError
from prefect_mlops.mlops.families import Predictor, predictor_module
from prefect_mlops.mlops.features import FeatureSpec
from prefect_mlops.mlops.uris import location_within

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"


class ModelLoadError(MlopsError):
    """The model named does not exist, or is not a pipeline model."""


MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})
"""MLflow's error codes for a model, version, alias or run that is not there (or not valid)."""


class ModelReferenceError(ModelLoadError):
    """A model was asked for by path or non-registry URI: only the registry is trusted."""


class RegistrationError(EnvironmentFailure):
    """A version was registered but the registry would not label it; it is kept."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\- ]*")
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")


class RegisteredVersion(BaseModel):
    """A model version and the alias it was given."""

    name: str
    version: str
    alias: str
    run_id: str
    model_uri: str


PIPELINE_REQUIREMENTS = ("pandas", "numpy", "pyarrow", "pydantic", "scikit-learn")
"""What every logged model pins besides its family's own packages."""


def _requirements(family: str) -> list[str]:
    import importlib.metadata as md

    names = [*predictor_module(family).REQUIREMENTS, *PIPELINE_REQUIREMENTS]
    return [f"{n}=={md.version(n)}" for n in names]


def input_schema(spec: FeatureSpec) -> Schema:
    """The model's input columns as MLflow's signature checks them: what the feature code reads.

    A column holds what a reader makes of the source file: pandas reads a column of whole
    numbers as int64 (float64 once a value is missing), true/false as bool, dates as text
    (datetime64 from Parquet). MLflow's ``double`` refuses int64 and bool, ``datetime`` refuses
    pandas' string dtype, and ``string`` refuses numbers; so numeric and date columns, and
    categorical columns of numeric codes, take any type (the feature code reads them, and
    what it cannot read is missing), and the other categorical columns take text.
    """
    text = set(spec.categorical) - set(spec.numbered_categories)
    return Schema(
        [
            ColSpec(DataType.string if column in text else AnyType(), column)
            for column in spec.input_columns
        ]
    )


def log_pipeline_model(run_id: str, predictor: Predictor, input_example: pd.DataFrame) -> str:
    """Log a predictor's files as an MLflow pyfunc with signature and input example.

    The model is defined by code (MLflow's models-from-code, no pickle), and the feature and
    family code (the ``mlops`` package, as ``prefect_mlops_model``) travels with it, so a version keeps predicting the way
    it was validated even after the code changes. Its signature takes the rows of the file it
    was trained from as pandas reads them (:func:`input_schema`).

    Returns:
        The logged model's URI (``models:/m-...``).
    """
    outputs = infer_signature(input_example, predictor.predict(input_example)).outputs
    signature = ModelSignature(inputs=input_schema(predictor.spec), outputs=outputs)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = predictor.save(Path(tmp))
        code = _model_code(Path(tmp) / "code")
        entry = Path(tmp) / "model_code.py"
        entry.write_text(MODEL_ENTRY)
        with mlflow.start_run(run_id=run_id):
            logged = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(entry),
                artifacts={name: str(path) for name, path in artifacts.items()},
                code_paths=[str(code)],
                signature=signature,
                input_example=input_example,
                pip_requirements=_requirements(predictor.facts.family),
            )
    return logged.model_uri


MODEL_CODE_PACKAGE = "prefect_mlops_model"
"""The name a model's copy of ``mlops/`` has in the model (``code/prefect_mlops_model/``)."""
MODEL_ENTRY = f'''"""MLflow models-from-code entry point: the model is defined by code, not a pickle."""

import sys

from mlflow.models import set_model

if "prefect_mlops" in sys.modules:  # loaded (or logged) by the project: its code, one copy
    from prefect_mlops.mlops.pyfunc import PipelinePyfunc
else:  # anywhere else: the model's own copy of the code, which MLflow put on sys.path
    from {MODEL_CODE_PACKAGE}.pyfunc import PipelinePyfunc

set_model(PipelinePyfunc())
'''


def _model_code(folder: Path) -> Path:
    """The model's own copy of the ``mlops`` package, under a name of its own.

    MLflow puts the model's code folder first on ``sys.path`` wherever it loads the pyfunc; a
    name apart from ``prefect_mlops`` keeps that copy from shadowing the installed project in
    the loading process and in processes it spawns. ``mlops/`` imports itself relatively, so
    the copy runs as it was validated without the project. A process that already uses the
    project (serving, the gates, a notebook that imported it) predicts with the project's code,
    as it always did: one copy of the classes, and models loaded one after another never read a
    first model's folder that may be gone.
    """
    package = folder / MODEL_CODE_PACKAGE
    shutil.copytree(
        Path(mlops.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    return package


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


WRITE_ATTEMPTS = 6
"""Tries of a registry write: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of back-off (with jitter) in all."""
_RETRIED_CODES = frozenset({"BAD_REQUEST", "TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR"})
"""How MLflow reports a lost race (a unique-key violation is BAD_REQUEST), a busy database or
an exhausted connection pool (also BAD_REQUEST, from a server under load)."""

T = TypeVar("T")


def retry_write(write: Callable[[], T], what: str) -> T:
    """Run a registry write, retrying the transient failures MLflow reports (see above).

    ``write`` must be safe to repeat. A failure that is not transient (a missing version, an
    invalid name) is raised at once.

    Raises:
        MlflowException: when the write still fails after ``WRITE_ATTEMPTS`` tries.
    """
    for attempt in range(WRITE_ATTEMPTS):
        try:
            return write()
        except MlflowException as error:
            if error.error_code not in _RETRIED_CODES or attempt == WRITE_ATTEMPTS - 1:
                raise
            delay = 0.1 * 2**attempt * random.uniform(0.5, 1.5)
            logger.warning(
                "%s failed (%s: %s); trying again in %.1f s",
                what,
                error.error_code,
                str(error.message)[:200],
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # the last attempt returns or raises


def set_alias(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version``, retrying the races MLflow loses.

    MLflow writes an alias by reading whether it exists, then inserting or updating. Two
    first writes of the same alias at once both insert, and the loser fails with a unique-key
    violation; its next try finds the row and updates it.

    Raises:
        MlflowException: when the write still fails after ``WRITE_ATTEMPTS`` tries.
    """
    retry_write(
        lambda: client.set_registered_model_alias(name, alias, version),
        f"Setting {name}@{alias} to version {version}",
    )


def find_registered_version(
    client: MlflowClient, name: str, model_uri: str, run_id: str
) -> str | None:
    """The version of ``name`` already registered from this run and model, if any.

    Raises:
        MlflowException: when the registry cannot say (the caller retries, rather than risk
            registering the model twice).
    """
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    model_id = logged_model_id(model_uri)
    same = [v for v in found if v.source == model_uri or (model_id and v.model_id == model_id)]
    return str(min(int(v.version) for v in same)) if same else None


def logged_model_id(model_uri: str) -> str | None:
    """A logged model's id from its URI (``models:/m-...``), else None."""
    return model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None


def model_identity(client: MlflowClient, model_uri: str) -> str:
    """What a model URI points at for good: its logged model (``models:/m-...``), else the
    version's source. A version number or an alias can be pointed elsewhere (or reused by a
    new registry); a logged model's files never change.

    Raises:
        ModelLoadError: when the model, alias or version does not exist.
    """
    if logged_model_id(model_uri) is not None:
        return model_uri
    name, version, _ = resolve_version(client, model_uri)
    found = client.get_model_version(name, version)
    return f"models:/{found.model_id}" if found.model_id else str(found.source)


def register_model_version(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    tags: Mapping[str, str],
    description: str = "",
) -> RegisteredVersion:
    """Register a model as a new version of ``name`` with the alias ``challenger``.

    Only the model gate makes a version ``champion`` (``model_registry.promotion``). Safe to
    repeat: a model this run already registered (a retried task) gets its version back
    instead of a second one. The alias write is retried when it loses a race with another
    registration; if it still fails the version is kept (a trained model is never deleted
    because a label could not be set) and the error says which version it is.

    Returns:
        The version and its alias.

    Raises:
        RegistrationError: when the alias could not be set.
    """
    retry_write(
        lambda: ensure_registered_model(client, name, description), f"Creating the model {name}"
    )

    def create_once() -> str:  # a try whose answer was lost may have created it
        found = find_registered_version(client, name, model_uri, run_id)
        if found is not None:
            logger.warning(
                "%s version %s already holds this model; not registering it again", name, found
            )
            return found
        created = client.create_model_version(
            name, model_uri, run_id=run_id, tags=dict(tags), model_id=logged_model_id(model_uri)
        )
        return str(created.version)

    version = retry_write(create_once, f"Registering a version of {name}")
    try:
        set_alias(client, name, CHALLENGER, version)
    except MlflowException as error:
        raise RegistrationError(
            f"{name} version {version} is registered, but the alias '{CHALLENGER}' could not be "
            f"set ({error.error_code}: {error.message}). The version is kept: retry this flow "
            "run when the registry is healthy (the retry finds the version and sets the alias)."
        ) from error
    logger.info("Registered %s version %s as '%s'", name, version, CHALLENGER)
    return RegisteredVersion(
        name=name, version=version, alias=CHALLENGER, run_id=run_id, model_uri=model_uri
    )


def parse_reference(reference: str) -> tuple[str, str | None, str | None]:
    """``NAME``, ``NAME@alias``, ``NAME/version`` or ``models:/...`` -> (name, alias, version).

    A bare name means its ``champion``. Anything else (a file path, a pickle, a ``runs:/``,
    ``file:`` or ``s3:`` URI) is refused before anything is read: models are loaded only from
    the registry, and only in their family's native format.

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
            "registry, in their model family's native format: give NAME, NAME@alias, NAME/version or "
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
        if error.error_code not in MISSING:  # the registry away or busy: not the model's fault
            raise
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

    Raises:
        ModelLoadError: when its files lie outside its experiment's artifact location.
    """
    return download_model(client, f"models:/{name}/{version}", destination, tracking_uri)


def download_model(
    client: MlflowClient, model_uri: str, destination: str, tracking_uri: str
) -> Path:
    """The files of a model: ``models:/m-<id>`` (a logged model) or a registry reference.

    The files must lie inside the artifact location of the experiment the model was logged
    in: a version registered from anywhere else (``file:///etc``, another bucket) is refused
    before anything is read.

    Returns:
        The local folder holding the model's files.

    Raises:
        ModelLoadError: when the model does not exist or its files lie outside the store.
        MlflowException: when the registry cannot be asked (away, busy): nothing is known
            about the model, so nothing is concluded either.
    """
    try:
        location, experiment_id = _model_location(client, model_uri)
        location = _storage_location(client, location)
        root = client.get_experiment(experiment_id).artifact_location if experiment_id else None
    except MlflowException as error:
        if error.error_code not in MISSING:
            raise
        raise ModelLoadError(
            f"{model_uri}: where its files are cannot be told ({error.error_code}: "
            f"{str(error.message)[:300]})."
        ) from None
    if root is None or not location_within(location, root):
        raise ModelLoadError(
            f"{model_uri} is refused: its files are at {location}, outside the artifact "
            f"location of its experiment ({root or 'unknown'}). Models are loaded only from "
            "the tracking store they were logged to."
        )
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=location, dst_path=destination, tracking_uri=tracking_uri
    )
    return Path(local)


def _model_location(client: MlflowClient, model_uri: str) -> tuple[str, str | None]:
    """Where a model's files are, and the experiment they belong to (None when unknown)."""
    model_id = logged_model_id(model_uri)
    if model_id is None:
        name, version, run_id = resolve_version(client, model_uri)
        location = client.get_model_version_download_uri(name, version)
        if run_id:
            return location, client.get_run(run_id).info.experiment_id
        model_id = client.get_model_version(name, version).model_id
        if model_id is None:
            return location, None
    try:
        logged = client.get_logged_model(model_id)
    except MlflowException as error:
        raise ModelLoadError(f"No logged model {model_id} ({error.error_code}).") from None
    return (location if logged_model_id(model_uri) is None else logged.artifact_location), (
        logged.experiment_id
    )


def _storage_location(client: MlflowClient, location: str, depth: int = 0) -> str:
    """An artifact URI with ``runs:/`` and ``models:/`` indirections resolved to storage."""
    if location.startswith("runs:/") and depth < 5:
        run_id, _, path = location.removeprefix("runs:/").partition("/")
        root = client.get_run(run_id).info.artifact_uri.rstrip("/")
        return f"{root}/{path}" if path else root
    if location.startswith("models:/") and depth < 5:
        inner, _ = _model_location(client, location)
        return _storage_location(client, inner, depth + 1)
    return location
