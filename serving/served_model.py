"""A registry version as the service holds it: the native model and which version it is.

The model itself is read from its files by :mod:`mlops.model_files` (after
:mod:`mlops.model_check` checked them in a child process) with its family's predictor, the
same predictor class the registered pyfunc and exported bundles use, so the service's
predictions are the registry model's, without MLflow's per-request pyfunc machinery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from prefect_mlops.mlops.families import Predictor
from prefect_mlops.mlops.features import FeatureSpec, build_feature_matrix
from prefect_mlops.mlops.model_files import PipelineModel

from .payload import Rows, check_values


@dataclass(frozen=True)
class ServedModel:
    """One loaded model version, ready to predict raw rows."""

    name: str
    version: str
    run_id: str
    model: PipelineModel

    @property
    def uri(self) -> str:
        return self.model.uri

    @property
    def predictor(self) -> Predictor:
        """The model family's predictor."""
        return self.model.predictor

    @property
    def spec(self) -> FeatureSpec:
        return self.model.spec

    @property
    def task(self) -> str:
        return self.model.task

    @property
    def classes(self) -> list[str] | None:
        return self.model.classes

    @property
    def input_example(self) -> pd.DataFrame | None:
        return self.model.input_example

    @property
    def check_s(self) -> float | None:
        """How long its check in a child process took (None: loaded without one)."""
        return self.model.check_s

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows, exactly as the registered pyfunc makes them."""
        return self.model.predict(rows)

    def predict_rows(self, rows: Rows) -> dict[str, np.ndarray]:
        """Prediction columns for a request's checked rows.

        Raises:
            PayloadError: a value the feature code could not read (see ``check_values``).
        """
        features = build_feature_matrix(rows.columns, rows.count, self.spec)
        check_values(rows, features, self.spec)
        return self.predictor.predict_matrix(features)

    def describe(self) -> dict[str, str]:
        """What ``/version`` answers."""
        return {"model": self.name, "version": self.version, "run_id": self.run_id, "uri": self.uri}
