"""The LightGBM predictor: a booster in LightGBM's text format, its feature transform, its task.

Reads and writes a model's files and scores plain columns. Used unchanged by the MLflow pyfunc
(:mod:`mlops.pyfunc`), the serving service, the model check's child process
(:mod:`mlops.model_check`) and exported bundles, which carry a copy of this file: so it imports
only LightGBM, numpy, pandas and the project's feature and prediction code, never MLflow or Dask.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from ...features import FeatureSpec, build_features
from ...prediction import ModelFacts, prediction_columns, prediction_frame

FAMILY = "lightgbm"
MODEL_FILE = "model.txt"
MODEL_FILES = (MODEL_FILE,)
"""The family's own files beside the feature spec and the task facts."""
BOOSTER_ARTIFACT = "booster"
"""The model file's MLflow artifact name."""
REQUIREMENTS = ("lightgbm",)
"""Packages predicting needs beyond numpy, pandas and pydantic (pinned when a model is logged)."""
LIBRARY = "LightGBM"
FATAL_PREFIX = "[LightGBM] [Fatal]"
"""How LightGBM starts the message it prints before it aborts on a damaged model file."""


@dataclass(frozen=True)
class LightGBMPredictor:
    """A LightGBM booster with its feature transform: raw rows in, prediction columns out."""

    booster: lgb.Booster
    facts: ModelFacts

    @property
    def spec(self) -> FeatureSpec:
        """The fitted feature transform."""
        return self.facts.spec

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``regression``."""
        return self.facts.task

    @property
    def classes(self) -> list[str] | None:
        """Class labels (index = code); None for regression."""
        return self.facts.classes

    def predict_matrix(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Prediction columns for a feature matrix (see :func:`mlops.prediction.prediction_columns`)."""
        return prediction_columns(self.booster.predict(features), self.facts)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows: ``prediction`` (and the class probabilities)."""
        features = build_features(rows, self.spec).to_numpy()
        return prediction_frame(self.predict_matrix(features), rows)

    def feature_importance(self) -> pd.DataFrame:
        """Gain and split importance per feature, most important first."""
        booster = self.booster
        return pd.DataFrame(
            {
                "feature": booster.feature_name(),
                "gain": booster.feature_importance("gain"),
                "split": booster.feature_importance("split"),
            }
        ).sort_values("gain", ascending=False, ignore_index=True)

    def save(self, folder: Path) -> dict[str, Path]:
        """Write the model's files into ``folder``; returns them by MLflow artifact name."""
        self.booster.save_model(folder / MODEL_FILE)
        return {BOOSTER_ARTIFACT: folder / MODEL_FILE, **self.facts.write(folder)}


def load(folder: Path) -> LightGBMPredictor:
    """Read a LightGBM model's files from ``folder`` (LightGBM may abort on a damaged one).

    Raises:
        ValueError, KeyError: the feature spec or task facts are unreadable.
    """
    facts = ModelFacts.read(folder, FAMILY)
    booster = lgb.Booster(model_str=(folder / MODEL_FILE).read_text())
    return LightGBMPredictor(booster=booster, facts=facts)
