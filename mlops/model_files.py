"""A pipeline model's files: read natively, never unpickled.

A pipeline model is its family's own file(s), the fitted feature transform (JSON) and the task
facts (JSON), beside MLflow's input example (``model_registry.registry.log_pipeline_model``
logs them). Reading them runs no code that came with the model. A family's library may abort
the process that parses a damaged model file, so files from the registry are read here only
after :mod:`.model_check` read them in a child process. Like the predictors, this needs no
MLflow, which keeps that child quick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import MlopsError
from .families import FAMILIES, Predictor, model_family, predictor_module
from .features import FeatureSpec
from .prediction import INFO_FILE, SPEC_FILE


class ModelFilesError(MlopsError):
    """A model's files are missing, unreadable or do not predict."""


EXAMPLE_FILE = "input_example.json"
SHARED_FILES = (SPEC_FILE, INFO_FILE)
"""The files every family's model has beside its own."""


@dataclass(frozen=True)
class PipelineModel:
    """A pipeline model read from its files: raw rows in, predictions out."""

    uri: str
    predictor: Predictor
    input_example: pd.DataFrame | None
    size_bytes: int
    """All files of the model as stored (model file, transform, code, environment)."""
    check_s: float | None = None
    """How long its check in a child process took (None: read without one)."""

    @property
    def spec(self) -> FeatureSpec:
        """The fitted feature transform."""
        return self.predictor.spec

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``regression``."""
        return self.predictor.task

    @property
    def classes(self) -> list[str] | None:
        """Class labels; None for regression."""
        return self.predictor.classes

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows, exactly as the registered pyfunc makes them."""
        return self.predictor.predict(rows)


def model_files(folder: Path, uri: str) -> dict[str, Path]:
    """The model's files under ``folder`` by name.

    Raises:
        ModelFilesError: when one the pipeline writes is missing (not a pipeline model).
    """
    files = {path.name: path for path in folder.rglob("*") if path.is_file()}
    required = list(SHARED_FILES)
    if INFO_FILE in files:
        family = model_family(files[INFO_FILE].parent)
        try:
            required = [*predictor_module(family).MODEL_FILES, *required]
        except KeyError:
            raise ModelFilesError(
                f"{uri} is of an unknown model family '{family}'. Known families: "
                f"{', '.join(FAMILIES)}; a new family is registered in mlops/families/__init__.py "
                "(docs/model-families.md)."
            ) from None
    missing = [name for name in required if name not in files]
    if missing:
        raise ModelFilesError(
            f"{uri} is not a pipeline model: it lacks {missing}. Only models logged by the "
            "pipeline (in their family's native format) are loaded; pickled models are refused."
        )
    return files


def read_pipeline_model(folder: Path, uri: str, check_s: float | None = None) -> PipelineModel:
    """Load a model's files in this process: only files :mod:`.model_check` passed, or that
    this process's own pipeline run wrote (a library may abort the process on damaged ones).

    Raises:
        ModelFilesError: when a file is missing or unreadable.
    """
    files = model_files(folder, uri)
    module = predictor_module(model_family(files[INFO_FILE].parent))
    try:
        predictor = module.load(files[INFO_FILE].parent)
    except (ValueError, KeyError) as error:
        files_read = ", ".join([*module.MODEL_FILES, INFO_FILE, SPEC_FILE])
        raise ModelFilesError(f"{uri} has an unreadable file ({files_read}): {error}") from None
    return PipelineModel(
        uri=uri,
        predictor=predictor,
        input_example=_input_example(files.get(EXAMPLE_FILE)),
        size_bytes=sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()),
        check_s=check_s,
    )


def _input_example(path: Path | None) -> pd.DataFrame | None:
    if path is None:
        return None
    raw = json.loads(path.read_text())
    return pd.DataFrame(raw["data"], columns=raw["columns"]) if "columns" in raw else None


def check_predictions(model: PipelineModel) -> int:
    """Predict the model's own input example; returns its row count.

    Raises:
        ModelFilesError: no example, a wrong row count or non-finite predictions.
    """
    example = model.input_example
    if example is None or example.empty:
        raise ModelFilesError(f"{model.uri} has no input example to check it with")
    predictions = model.predict(example)
    if len(predictions) != len(example):
        raise ModelFilesError(f"{model.uri} returned {len(predictions)} rows for {len(example)}")
    numeric = predictions.select_dtypes("number").to_numpy(dtype="float64")
    if not np.isfinite(numeric).all():
        raise ModelFilesError(f"{model.uri} predicts non-finite values on its input example")
    return len(predictions)
