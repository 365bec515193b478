"""A pipeline model's files: read natively, never unpickled.

A pipeline model is three files (``mlops.pyfunc`` logs them): LightGBM's text model, the fitted
feature transform (JSON) and the task facts (JSON), beside MLflow's input example. Reading them
runs no code that came with the model. LightGBM aborts the process that parses some damaged
model files, so files from the registry are read here only after :mod:`.model_check` read them
in a child process. Like :mod:`.prediction`, this needs no MLflow, which keeps that child quick.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from .errors import MlopsError
from .features import FeatureSpec
from .prediction import predict_frame


class ModelFilesError(MlopsError):
    """A model's files are missing, unreadable or do not predict."""


MODEL_FILE = "model.txt"
SPEC_FILE = "feature_spec.json"
INFO_FILE = "model_info.json"
EXAMPLE_FILE = "input_example.json"
REQUIRED_FILES = (MODEL_FILE, SPEC_FILE, INFO_FILE)


@dataclass(frozen=True)
class PipelineModel:
    """A pipeline model read from its files: raw rows in, predictions out."""

    uri: str
    booster: lgb.Booster
    spec: FeatureSpec
    task: str
    classes: list[str] | None
    input_example: pd.DataFrame | None
    size_bytes: int
    """All files of the model as stored (model file, transform, code, environment)."""
    check_s: float | None = None
    """How long its check in a child process took (None: read without one)."""

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows, exactly as the registered pyfunc makes them."""
        return predict_frame(self.booster, self.spec, self.task, self.classes, rows)


def model_files(folder: Path, uri: str) -> dict[str, Path]:
    """The model's files under ``folder`` by name.

    Raises:
        ModelFilesError: when one the pipeline writes is missing (not a pipeline model).
    """
    files = {path.name: path for path in folder.rglob("*") if path.is_file()}
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise ModelFilesError(
            f"{uri} is not a pipeline model: it lacks {missing}. Only models logged by the "
            "pipeline (LightGBM's text format) are loaded; pickled models are refused."
        )
    return files


def read_pipeline_model(folder: Path, uri: str, check_s: float | None = None) -> PipelineModel:
    """Load a model's files in this process: only files :mod:`.model_check` passed, or that
    this process's own pipeline run wrote (LightGBM may abort the process on damaged ones).

    Raises:
        ModelFilesError: when a file is missing or unreadable.
    """
    files = model_files(folder, uri)
    try:
        info = json.loads(files[INFO_FILE].read_text())
        spec = FeatureSpec.model_validate_json(files[SPEC_FILE].read_text())
        task, classes = info["task"], info["classes"]
    except (ValueError, KeyError) as error:
        raise ModelFilesError(
            f"{uri} has an unreadable {INFO_FILE} or {SPEC_FILE}: {error}"
        ) from None
    return PipelineModel(
        uri=uri,
        booster=lgb.Booster(model_str=files[MODEL_FILE].read_text()),
        spec=spec,
        task=task,
        classes=classes,
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
