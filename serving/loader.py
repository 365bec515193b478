"""Loading a registered model for serving: the native LightGBM booster and its feature code.

The registry holds the pipeline's pyfunc model (``mlops.pyfunc``): a LightGBM model file, the
fitted feature transform and the task facts. Serving reads those three files directly and
predicts with the same feature and prediction code (:mod:`mlops.features`,
:mod:`mlops.prediction`), so its predictions are the registry model's, without MLflow's
per-request pyfunc machinery.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from mlops.features import FeatureSpec, build_feature_matrix
from mlops.prediction import predict_frame, predict_matrix
from model_registry.registry import ModelLoadError, download_version, resolve_version

from .payload import Rows, check_values


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version, ready to predict raw rows."""

    name: str
    version: str
    run_id: str
    uri: str
    booster: lgb.Booster
    spec: FeatureSpec
    task: str
    classes: list[str] | None
    input_example: pd.DataFrame | None

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows, exactly as the registered pyfunc makes them."""
        return predict_frame(self.booster, self.spec, self.task, self.classes, rows)

    def predict_rows(self, rows: Rows) -> dict[str, np.ndarray]:
        """Prediction columns for a request's checked rows.

        Raises:
            PayloadError: a value the feature code could not read (see ``check_values``).
        """
        features = build_feature_matrix(rows.columns, rows.count, self.spec)
        check_values(rows, features, self.spec)
        return predict_matrix(self.booster, self.task, self.classes, features)

    def describe(self) -> dict[str, str]:
        """What ``/version`` answers."""
        return {"model": self.name, "version": self.version, "run_id": self.run_id, "uri": self.uri}


def load_served_model(client: MlflowClient, reference: str, tracking_uri: str) -> ServedModel:
    """Download a model version's files from the registry and load them natively.

    Raises:
        ModelLoadError: when it does not exist or was not logged by the pipeline.
    """
    name, version, run_id = resolve_version(client, reference)
    uri = f"models:/{name}/{version}"
    with tempfile.TemporaryDirectory(prefix="serving-") as tmp:
        local = download_version(client, name, version, tmp, tracking_uri)
        files = {path.name: path for path in local.rglob("*") if path.is_file()}
        needed = ("model.txt", "feature_spec.json", "model_info.json")
        if not all(n in files for n in needed):
            raise ModelLoadError(
                f"{uri} is not a pipeline model: it lacks {[n for n in needed if n not in files]}."
            )
        info = json.loads(files["model_info.json"].read_text())
        example = _input_example(files)
        return ServedModel(
            name=name,
            version=version,
            run_id=run_id,
            uri=uri,
            booster=lgb.Booster(model_str=files["model.txt"].read_text()),
            spec=FeatureSpec.model_validate_json(files["feature_spec.json"].read_text()),
            task=info["task"],
            classes=info["classes"],
            input_example=example,
        )


def _input_example(files: dict[str, Path]) -> pd.DataFrame | None:
    path = files.get("input_example.json")
    if path is None:
        return None
    raw = json.loads(path.read_text())
    return pd.DataFrame(raw["data"], columns=raw["columns"]) if "columns" in raw else None
