"""The registered model: raw rows in, predictions out, through the shared feature code.

Stored in MLflow as a pyfunc with three artifacts: the LightGBM model file, the fitted
:class:`~mlops.features.FeatureSpec` and a small JSON of task facts. Anything that loads it
(``mlflow.pyfunc.load_model``, ``mlflow models serve``, our serving service, an exported
bundle) predicts with :mod:`mlops.prediction`, so the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow.pyfunc
import pandas as pd

from mlops.features import FeatureSpec
from mlops.prediction import predict_frame

BOOSTER_ARTIFACT = "booster"
SPEC_ARTIFACT = "feature_spec"
INFO_ARTIFACT = "model_info"


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
