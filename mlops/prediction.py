"""What every model family's predictor shares: its facts files and its prediction columns.

A pipeline model is its family's native model file(s) beside two JSON files written here: the
fitted feature transform (:class:`~mlops.features.FeatureSpec`) and the task facts (task,
classes, target, family, and a binary model's decision threshold). A family's predictor (``mlops/families/<name>/predictor.py``) turns
feature matrices into scores; :func:`prediction_columns` turns scores into the columns every
way of loading a model returns (the MLflow pyfunc, the serving service, exported bundles).
Like :mod:`.features`, it needs nothing of the project beyond that module, and no MLflow:
exported bundles carry a copy of it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .features import FeatureSpec

SPEC_FILE = "feature_spec.json"
INFO_FILE = "model_info.json"
SPEC_ARTIFACT = "feature_spec"
"""MLflow artifact names of the two files in a logged model."""
INFO_ARTIFACT = "model_info"


DEFAULT_THRESHOLD = 0.5
"""The decision threshold of a binary model whose facts store none (logged before thresholds)."""


@dataclass(frozen=True)
class ModelFacts:
    """What a model predicts, independent of its family: the transform, the task, and for a
    binary model the decision threshold (a row is the second class when its probability is at
    least it; chosen on the validation split by the train stage)."""

    spec: FeatureSpec
    task: str
    classes: list[str] | None
    family: str
    target: str | None = None
    threshold: float = DEFAULT_THRESHOLD

    def write(self, folder: Path) -> dict[str, Path]:
        """Write the two JSON files; returns them by MLflow artifact name."""
        spec, info = folder / SPEC_FILE, folder / INFO_FILE
        spec.write_text(self.spec.model_dump_json(indent=2))
        facts = {
            "task": self.task,
            "classes": self.classes,
            "target": self.target,
            "family": self.family,
        }
        if self.task == "binary":
            facts["threshold"] = self.threshold
        info.write_text(json.dumps(facts, indent=2))
        return {SPEC_ARTIFACT: spec, INFO_ARTIFACT: info}

    @classmethod
    def read(cls, folder: Path, family: str) -> ModelFacts:
        """Read the two JSON files from ``folder``.

        Args:
            folder: Where the files are.
            family: The family a file without one was written by (before families existed).

        Raises:
            ValueError, KeyError: a file is not valid JSON, or lacks a field.
            OSError: a file cannot be read.
        """
        info = json.loads((folder / INFO_FILE).read_text())
        return cls(
            spec=FeatureSpec.model_validate_json((folder / SPEC_FILE).read_text()),
            task=info["task"],
            classes=info["classes"],
            family=info.get("family", family),
            target=info.get("target"),
            threshold=float(info.get("threshold", DEFAULT_THRESHOLD)),
        )


def family_of(folder: Path, default: str) -> str:
    """The family named by ``folder``'s task facts (``default`` when the file names none)."""
    try:
        return json.loads((folder / INFO_FILE).read_text()).get("family", default)
    except (OSError, ValueError, AttributeError):
        return default


def prediction_columns(scores: np.ndarray, facts: ModelFacts) -> dict[str, np.ndarray]:
    """Prediction columns from a model's scores: the value (regression), the probability of
    the second class (binary) or one probability per class (multiclass).

    Args:
        scores: The family's output: values, the second class's probability, or one
            probability per class.
        facts: The model's task, classes and (binary) decision threshold.

    Returns:
        Regression: a ``prediction`` column. Binary: ``prediction`` (the second class where
        the probability is at least the model's threshold) and ``probability`` (of the second
        class). Multiclass: ``prediction`` (the most probable class) and
        ``probability_<label>`` per class.
    """
    if facts.task == "regression":
        return {"prediction": scores}
    labels = np.asarray(facts.classes, dtype=object)
    if facts.task == "binary":
        positive = (scores >= facts.threshold).astype(int)
        return {"prediction": labels[positive], "probability": scores}
    columns = {"prediction": labels[scores.argmax(axis=1)]}
    return columns | {f"probability_{label}": scores[:, i] for i, label in enumerate(labels)}


def prediction_frame(columns: dict[str, np.ndarray], rows: pd.DataFrame) -> pd.DataFrame:
    """The prediction columns as a frame on the rows' index."""
    return pd.DataFrame(columns, index=rows.index)


def class_scores(predictions: pd.DataFrame, task: str, classes: list[str] | None) -> np.ndarray:
    """Probability of the positive class (binary), per class (multiclass) or the value (regression)."""
    if task == "regression":
        return predictions["prediction"].to_numpy(dtype="float64")
    if task == "binary":
        return predictions["probability"].to_numpy(dtype="float64")
    return predictions[[f"probability_{c}" for c in classes]].to_numpy(dtype="float64")
