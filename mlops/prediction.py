"""Predictions of a pipeline model from raw rows: the shared feature code, then the booster.

Used by the MLflow pyfunc (:mod:`mlops.pyfunc`), the serving service and exported model
bundles, so every way of loading a model predicts the same numbers. Like :mod:`.features`, it
needs nothing of the project beyond that module, and no MLflow.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd

from .features import FeatureSpec, build_features


def predict_matrix(
    booster: lgb.Booster, task: str, classes: list[str] | None, features: np.ndarray
) -> dict[str, np.ndarray]:
    """Prediction columns for a feature matrix (see :func:`predict_frame` for their names)."""
    scores = booster.predict(features)
    if task == "regression":
        return {"prediction": scores}
    labels = np.asarray(classes, dtype=object)
    if task == "binary":
        return {"prediction": labels[(scores >= 0.5).astype(int)], "probability": scores}
    columns = {"prediction": labels[scores.argmax(axis=1)]}
    return columns | {f"probability_{label}": scores[:, i] for i, label in enumerate(classes)}


def predict_frame(
    booster: lgb.Booster, spec: FeatureSpec, task: str, classes: list[str] | None, raw: pd.DataFrame
) -> pd.DataFrame:
    """Predictions for raw rows.

    Returns:
        Regression: a ``prediction`` column. Binary: ``prediction`` (label) and ``probability``
        (of the second class). Multiclass: ``prediction`` and ``probability_<label>`` per class.
    """
    features = build_features(raw, spec).to_numpy()
    return pd.DataFrame(predict_matrix(booster, task, classes, features), index=raw.index)


def class_scores(predictions: pd.DataFrame, task: str, classes: list[str] | None) -> np.ndarray:
    """Probability of the positive class (binary), per class (multiclass) or the value (regression)."""
    if task == "regression":
        return predictions["prediction"].to_numpy(dtype="float64")
    if task == "binary":
        return predictions["probability"].to_numpy(dtype="float64")
    return predictions[[f"probability_{c}" for c in classes]].to_numpy(dtype="float64")
