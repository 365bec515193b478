"""The registered model: raw rows in, predictions out, through its family's predictor.

Stored in MLflow as a pyfunc (models-from-code: :mod:`mlops.model_code`) whose artifacts are
the model's files: its family's own model file(s), the fitted
:class:`~mlops.features.FeatureSpec` and a small JSON of task facts. Anything that loads it
(``mlflow.pyfunc.load_model``, ``mlflow models serve``, our serving service, an exported
bundle) predicts with the same predictor class (:func:`mlops.families.load_predictor`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from prefect_mlops.mlops.families import Predictor, load_predictor
from prefect_mlops.mlops.prediction import INFO_ARTIFACT


class PipelinePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc wrapper around a model family's predictor."""

    def load_context(self, context: Any) -> None:
        """Load the predictor from the folder holding the model's artifacts."""
        self.predictor: Predictor = load_predictor(Path(context.artifacts[INFO_ARTIFACT]).parent)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """Prediction columns for raw rows."""
        return self.predictor.predict(model_input)
