"""Model families: the seam between the pipeline and the library that trains and predicts.

A model is a package: a family's trainer turns a :class:`~mlops.dataset.DatasetRef` and
parameters into a :class:`TrainedModel` whose :class:`Predictor` writes the model's files; the
family's predictor module loads those files anywhere (a pipeline stage, the serving service,
the model check's child process, the MLflow pyfunc, an exported bundle) and scores plain
columns. A family lives in ``mlops/families/<name>/``:

- ``predictor.py``: the predictor and its files. Module-level ``FAMILY`` (its name),
  ``MODEL_FILES`` (its own files), ``REQUIREMENTS`` (packages it predicts with), ``LIBRARY``
  and ``FATAL_PREFIX`` (how its library names itself when it aborts), and
  ``load(folder) -> Predictor``. It imports only its library, numpy, pandas and the project's
  ``features``/``prediction``/``errors`` modules, by relative import: bundles copy it.
- ``family.py``: ``FAMILY``, an object with the :class:`ModelFamily` methods (training on Dask,
  what drives its cost for the allocator).

:data:`FAMILIES` lists them; ``docs/model-families.md`` says how to add one.
"""

from __future__ import annotations

import dataclasses
from importlib import import_module
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from ..config import ClusterConfig
from ..features import FeatureSpec
from ..prediction import ModelFacts, family_of
from ..thresholds import ThresholdChoice

if TYPE_CHECKING:
    from distributed import Client

    from ..config import TrainingConfig
    from ..dataset import DatasetRef

FAMILIES = {"lightgbm": f"{__name__}.lightgbm", "xgboost": f"{__name__}.xgboost"}
"""Family name -> its package (relative to this one: a model's copy of the code runs under a
name of its own)."""
DEFAULT_FAMILY = "lightgbm"
"""The family a use case trains when its config names none (``training.family``), and the
family of a model whose files predate families."""
DEFERRED_IMPORTS = tuple(
    f"{package}.{part}" for package in FAMILIES.values() for part in ("family", "predictor")
)
"""Each family's trainer and predictor: imported by name when a stage trains or scores, not
with this module; the fork servers (``infra/fork_server.py``) import them ahead."""


@runtime_checkable
class Predictor(Protocol):
    """A loaded model: raw rows (or a feature matrix) in, prediction columns out.

    A family's predictor is a frozen dataclass with a ``facts`` field, labels rows with
    :func:`mlops.prediction.prediction_columns` (which applies the facts' decision threshold)
    and so takes its threshold from :func:`with_threshold`.
    """

    @property
    def facts(self) -> ModelFacts:
        """Its feature transform, task and family (written beside its own files)."""
        ...

    @property
    def spec(self) -> FeatureSpec: ...

    @property
    def task(self) -> str: ...

    @property
    def classes(self) -> list[str] | None: ...

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Prediction columns for raw rows (see :func:`mlops.prediction.prediction_columns`)."""
        ...

    def predict_matrix(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Prediction columns for a feature matrix built by :mod:`mlops.features`."""
        ...

    def feature_importance(self) -> pd.DataFrame:
        """Columns ``feature``, ``gain``, ``split``, most important first."""
        ...

    def save(self, folder: Path) -> dict[str, Path]:
        """Write the model's files; returns them by MLflow artifact name."""
        ...


class TrainedModel(BaseModel):
    """What a training run produced, before it is logged."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    predictor: Predictor
    params: dict[str, Any]
    best_iteration: int
    iterations_run: int
    validation_metric: str
    validation_curve: list[float]
    validation_targets: np.ndarray
    validation_scores: np.ndarray
    wall_time_s: float
    cluster: ClusterConfig
    peak_worker_memory_bytes: dict[str, int] = Field(
        default_factory=dict, description="Per worker; measured by whoever holds the cluster."
    )
    threshold: ThresholdChoice | None = Field(
        default=None,
        description="Binary: the decision threshold chosen on the validation split (set by the "
        "train stage with with_threshold, whatever the family).",
    )


class TrialResult(BaseModel):
    """One tuning trial: a training run in one process, judged on the validation split."""

    validation_loss: float
    """The family's validation metric (log-loss or RMSE) at the best round: lower is better."""
    best_iteration: int
    wall_time_s: float


class ModelFamily(Protocol):
    """What the pipeline and the allocator need of a family."""

    name: str

    def train(
        self,
        client: Client,
        dataset: DatasetRef,
        training: TrainingConfig,
        work_uri: str,
        workers: list[str] | None = None,
    ) -> TrainedModel:
        """Train on the dataset's training split across the client's workers (or ``workers``),
        stopping early on the validation split; ``work_uri`` is scratch space."""
        ...

    def train_trial(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        dataset: DatasetRef,
        training: TrainingConfig,
        threads: int,
    ) -> TrialResult:
        """Train in this process on ``threads`` threads (a tuning trial, run as a Dask task on
        one worker): ``train`` and ``validation`` are the dataset's splits as read
        (:func:`mlops.dataset.read_split`), early stopping on ``validation`` as in :meth:`train`."""
        ...

    def cost_drivers(self, training: TrainingConfig, dataset: DatasetRef) -> dict[str, Any]:
        """What drives training cost beyond the dataset's meta-features, as the allocator's
        job fields (``infra.allocator.history.JobFields``) name them."""
        ...

    def for_gpu(self, training: TrainingConfig) -> TrainingConfig:
        """The config for training on a GPU (unchanged when the library cannot use one)."""
        ...


def boosting_cost_drivers(training: TrainingConfig) -> dict[str, Any]:
    """What drives a gradient-boosting family's training cost, under the allocator's job
    fields' names (LightGBM's): rounds, tree size, histogram bins, learning rate, patience."""
    return {
        "n_estimators": training.n_estimators,
        "num_leaves": training.num_leaves,
        "max_bin": training.max_bin,
        "learning_rate": training.learning_rate,
        "early_stopping_rounds": training.early_stopping_rounds,
    }


def with_threshold(predictor: Predictor, threshold: float) -> Predictor:
    """The predictor with ``threshold`` as its decision threshold (in its facts, so it is
    written with its files and used wherever it labels rows).

    Raises:
        TypeError: the predictor is not a dataclass with a ``facts`` field, as every family's is.
    """
    if not dataclasses.is_dataclass(predictor) or "facts" not in {
        f.name for f in dataclasses.fields(predictor)
    }:
        raise TypeError(
            f"{type(predictor).__name__} is not a dataclass with a 'facts' field: a family's "
            "predictor keeps its ModelFacts in one (see mlops/families/lightgbm/predictor.py)"
        )
    facts = dataclasses.replace(predictor.facts, threshold=float(threshold))
    return dataclasses.replace(predictor, facts=facts)


def family(name: str = DEFAULT_FAMILY) -> ModelFamily:
    """The family called ``name`` (its trainer imports Dask).

    Raises:
        KeyError: no such family (it says which exist).
    """
    return import_module(f"{_package(name)}.family").FAMILY


def predictor_module(name: str) -> ModuleType:
    """The predictor module of the family called ``name`` (no Dask, no MLflow).

    Raises:
        KeyError: no such family (it says which exist).
    """
    return import_module(f"{_package(name)}.predictor")


def model_family(folder: Path) -> str:
    """The family of the model whose files are in ``folder``."""
    return family_of(folder, DEFAULT_FAMILY)


def load_predictor(folder: Path) -> Predictor:
    """Read the model in ``folder`` with its family's predictor (its library may abort on a
    damaged file: see :mod:`mlops.model_check`).

    Raises:
        KeyError: an unknown family, or task facts that lack a field.
        ValueError: unreadable task facts or feature spec.
    """
    return predictor_module(model_family(folder)).load(folder)


def _package(name: str) -> str:
    if name not in FAMILIES:
        raise KeyError(f"No model family '{name}'; there are {', '.join(sorted(FAMILIES))}.")
    return FAMILIES[name]
