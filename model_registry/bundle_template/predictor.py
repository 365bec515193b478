"""A registered model as a self-contained predictor, written by `mlops export`.

Raw rows in, predictions out, with the feature code, the model family's predictor and the
model that the registry version was validated with; MLflow and Prefect are not needed. The
model's facts (name, version, run, columns) are in ``model/bundle.json``.

    from <package> import load
    predictor = load()
    predictor.predict([{"amount": 12.5, ...}])   # or a pandas DataFrame, or {column: [values]}

This file is the bundle's ``__init__.py``; ``_mlops/`` holds the model's own copy of the
project's feature and prediction code and of its family's predictor
(``_mlops/families/<family>/predictor.py``), the class the pipeline and the service load it with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

import pandas as pd

from ._mlops.features import FeatureSpec

MODEL_FOLDER = Path(__file__).resolve().parent / "model"


class Predictor:
    """The exported model version, loaded from the bundle's files by its family's predictor."""

    def __init__(self, folder: Path = MODEL_FOLDER) -> None:
        family = json.loads((folder / "model_info.json").read_text())["family"]
        module = import_module(f"._mlops.families.{family}.predictor", __name__)
        self.model = module.load(folder)
        self.about: dict[str, Any] = json.loads((folder / "bundle.json").read_text())

    @property
    def task(self) -> str:
        """``binary``, ``multiclass`` or ``regression``."""
        return self.model.task

    @property
    def classes(self) -> list[str] | None:
        """Class labels; None for regression."""
        return self.model.classes

    @property
    def spec(self) -> FeatureSpec:
        """The fitted feature transform."""
        return self.model.spec

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
        return self.model.predict(frame)


def load() -> Predictor:
    """The predictor of this bundle."""
    return Predictor()
