"""The XGBoost predictor: a booster in XGBoost's JSON format, its feature transform, its task.

Reads and writes a model's files and scores plain columns. Used unchanged by the MLflow pyfunc
(:mod:`mlops.pyfunc`), the serving service, the model check's child process
(:mod:`mlops.model_check`) and exported bundles, which carry a copy of this file: so it imports
only XGBoost, numpy, pandas and the project's feature and prediction code, never MLflow or Dask.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import xgboost as xgb

from ...features import FeatureSpec, build_features
from ...prediction import ModelFacts, prediction_columns, prediction_frame

FAMILY = "xgboost"
MODEL_FILE = "xgboost_model.json"
MODEL_FILES = (MODEL_FILE,)
"""The family's own files beside the feature spec and the task facts."""
BOOSTER_ARTIFACT = "booster"
"""The model file's MLflow artifact name."""


def _distribution() -> str:
    """The installed XGBoost distribution: the CPU-only build the lock pins, or the full one
    (with CUDA) a GPU image installs in its place."""
    try:
        metadata.version("xgboost-cpu")
    except metadata.PackageNotFoundError:
        return "xgboost"
    return "xgboost-cpu"


REQUIREMENTS = (_distribution(),)
"""Packages predicting needs beyond numpy, pandas and pydantic (pinned when a model is logged)."""
LIBRARY = "XGBoost"
FATAL_PREFIX = "XGBoostError:"
"""XGBoost raises (``XGBoostError``) rather than aborting; the model check quotes what follows."""


def as_float64(scores: np.ndarray, task: str) -> np.ndarray:
    """XGBoost's float32 scores as float64, each multiclass row summing to 1 in float64 (as
    scikit-learn's metrics check)."""
    scores = np.asarray(scores, dtype="float64")
    return scores / scores.sum(axis=1, keepdims=True) if task == "multiclass" else scores


@dataclass(frozen=True)
class XGBoostPredictor:
    """An XGBoost booster with its feature transform: raw rows in, prediction columns out."""

    booster: xgb.Booster
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
        scores = as_float64(self.booster.inplace_predict(features), self.task)
        return prediction_columns(scores, self.facts)

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Predictions for raw rows: ``prediction`` (and the class probabilities)."""
        features = build_features(rows, self.spec).to_numpy()
        return prediction_frame(self.predict_matrix(features), rows)

    def feature_importance(self) -> pd.DataFrame:
        """Total gain and split count (XGBoost's ``weight``) per feature, most important first;
        features no tree splits on have zeros."""
        names = self.spec.feature_names
        gain = self.booster.get_score(importance_type="total_gain")
        split = self.booster.get_score(importance_type="weight")
        return pd.DataFrame(
            {
                "feature": names,
                "gain": [float(gain.get(name, 0.0)) for name in names],
                "split": [int(split.get(name, 0)) for name in names],
            }
        ).sort_values("gain", ascending=False, ignore_index=True)

    def save(self, folder: Path) -> dict[str, Path]:
        """Write the model's files into ``folder``; returns them by MLflow artifact name."""
        self.booster.save_model(folder / MODEL_FILE)
        return {BOOSTER_ARTIFACT: folder / MODEL_FILE, **self.facts.write(folder)}


def load(folder: Path) -> XGBoostPredictor:
    """Read an XGBoost model's files from ``folder``.

    Raises:
        ValueError, KeyError: the model file, the feature spec or the task facts are unreadable.
    """
    facts = ModelFacts.read(folder, FAMILY)
    booster = xgb.Booster()
    try:
        booster.load_model(folder / MODEL_FILE)
    except xgb.core.XGBoostError as error:
        said = str(error).strip().splitlines()[0] if str(error).strip() else "no reason given"
        raise ValueError(f"XGBoost cannot read {MODEL_FILE}: {said}") from None
    return XGBoostPredictor(booster=booster, facts=facts)
