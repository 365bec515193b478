"""A registered model as a self-contained predictor, written by `mlops export`.

Raw rows in, predictions out, with the feature code and the LightGBM model that the registry
version was validated with; MLflow and Prefect are not needed. The model's facts (name,
version, run, columns) are in ``model/bundle.json``.

    from <package> import load
    predictor = load()
    predictor.predict([{"amount": 12.5, ...}])   # or a pandas DataFrame, or {column: [values]}

This file is the bundle's ``__init__.py``; ``_mlops/`` holds the model's own copy of the
project's feature and prediction code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import pandas as pd

from ._mlops.features import FeatureSpec
from ._mlops.prediction import predict_frame

MODEL_FOLDER = Path(__file__).resolve().parent / "model"


class Predictor:
    """The exported model version, loaded from the bundle's files."""

    def __init__(self, folder: Path = MODEL_FOLDER) -> None:
        info = json.loads((folder / "model_info.json").read_text())
        self.task: str = info["task"]
        self.classes: list[str] | None = info["classes"]
        self.spec = FeatureSpec.model_validate_json((folder / "feature_spec.json").read_text())
        self.booster = lgb.Booster(model_file=str(folder / "model.txt"))
        self.about: dict[str, Any] = json.loads((folder / "bundle.json").read_text())

    @property
    def input_columns(self) -> list[str]:
        """The raw columns a row must have."""
        return self.spec.input_columns

    def predict(
        self, rows: pd.DataFrame | Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]
    ) -> pd.DataFrame:
        """Predictions for raw rows: a DataFrame, a list of row objects or an object of columns.

        Returns:
            ``prediction`` (and ``probability`` or ``probability_<class>`` for classifiers),
            exactly as the registry model predicts.

        Raises:
            ValueError: naming the input columns that are missing.
        """
        frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"The rows lack column(s) {missing}; the model takes {self.input_columns}."
            )
        return predict_frame(self.booster, self.spec, self.task, self.classes, frame)


def load() -> Predictor:
    """The predictor of this bundle."""
    return Predictor()
