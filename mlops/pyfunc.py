"""The registered model: raw rows in, predictions out, through the shared feature code.

Stored in MLflow as a pyfunc with three artifacts: the LightGBM model file, the fitted
:class:`~mlops.features.FeatureSpec` and a small JSON of task facts. Anything that loads it
(``mlflow.pyfunc.load_model``, ``mlflow models serve``, our serving service) predicts the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow.pyfunc
import numpy as np
import pandas as pd

from mlops.features import FeatureSpec, build_features

BOOSTER_ARTIFACT = "booster"
SPEC_ARTIFACT = "feature_spec"
INFO_ARTIFACT = "model_info"


def predict_frame(
    booster: lgb.Booster, spec: FeatureSpec, task: str, classes: list[str] | None, raw: pd.DataFrame
) -> pd.DataFrame:
    """Predictions for raw rows.

    Returns:
        Regression: a ``prediction`` column. Binary: ``prediction`` (label) and ``probability``
        (of the second class). Multiclass: ``prediction`` and ``probability_<label>`` per class.
    """
    features = build_features(raw, spec).to_numpy()
    scores = booster.predict(features)
    if task == "regression":
        return pd.DataFrame({"prediction": scores}, index=raw.index)
    labels = np.asarray(classes, dtype=object)
    if task == "binary":
        predicted = labels[(scores >= 0.5).astype(int)]
        return pd.DataFrame({"prediction": predicted, "probability": scores}, index=raw.index)
    columns = {"prediction": labels[scores.argmax(axis=1)]}
    columns |= {f"probability_{label}": scores[:, i] for i, label in enumerate(classes)}
    return pd.DataFrame(columns, index=raw.index)


def class_scores(predictions: pd.DataFrame, task: str, classes: list[str] | None) -> np.ndarray:
    """Probability of the positive class (binary), per class (multiclass) or the value (regression)."""
    if task == "regression":
        return predictions["prediction"].to_numpy(dtype="float64")
    if task == "binary":
        return predictions["probability"].to_numpy(dtype="float64")
    return predictions[[f"probability_{c}" for c in classes]].to_numpy(dtype="float64")


class LightGBMPipelineModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around a LightGBM booster and its feature transform."""

    def load_context(self, context: Any) -> None:
        artifacts = context.artifacts
        info = json.loads(Path(artifacts[INFO_ARTIFACT]).read_text())
        self.task: str = info["task"]
        self.classes: list[str] | None = info["classes"]
        self.spec = FeatureSpec.model_validate_json(Path(artifacts[SPEC_ARTIFACT]).read_text())
        self.booster = lgb.Booster(model_file=artifacts[BOOSTER_ARTIFACT])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        return predict_frame(self.booster, self.spec, self.task, self.classes, model_input)
