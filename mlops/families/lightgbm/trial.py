"""A LightGBM tuning trial in one process: the Dask training's parameters, loss and stopping.

A trial trains with plain ``lightgbm`` on the threads it is given, on the same features
(:func:`mlops.features.build_features`) and parameters (:func:`.training.lightgbm_params`) as
the Dask training, stops early on the whole validation split after the same patience, and is
judged by the same loss (:func:`.training.validation_loss`: log-loss or RMSE at the best round).
"""

from __future__ import annotations

import time
import warnings
from typing import NamedTuple

import lightgbm as lgb
import numpy as np
import pandas as pd

from ...dataset import TARGET_COLUMN, DatasetRef
from ...errors import DataError
from ...features import build_features
from ...training_config import TrainingConfig
from .. import TrialResult
from .training import _METRIC, lightgbm_params, validation_loss


class FittedTrial(NamedTuple):
    """A trial's model and how it did on the validation split."""

    booster: lgb.Booster
    rounds: int
    validation_loss: float
    wall_time_s: float


def fit_lightgbm_trial(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    dataset: DatasetRef,
    training: TrainingConfig,
    threads: int,
) -> FittedTrial:
    """Train on ``train`` with ``threads`` threads, stopping early on ``validation``.

    Args:
        train: The training split as read (raw columns and the encoded target).
        validation: The validation split as read.
        dataset: The dataset version (feature transform, task, classes).
        training: The trial's parameters.
        threads: LightGBM threads.

    Returns:
        The booster, its best round, the validation loss there, and the training time.

    Raises:
        DataError: a split is empty.
    """
    if train.empty or validation.empty:
        raise DataError(
            f"Dataset {dataset.version}: a tuning trial needs rows in both the training and "
            f"the validation split (got {len(train)} and {len(validation)})."
        )
    params = lightgbm_params(training, dataset)
    params.pop("time_out", None)  # a network setting of lightgbm.dask
    params |= {"n_jobs": threads, "metric": _METRIC[dataset.task]}
    spec = dataset.feature_spec
    features = build_features(train, spec)
    labels = train[TARGET_COLUMN].to_numpy(dtype="float64")
    valid_features = build_features(validation, spec)
    valid_labels = validation[TARGET_COLUMN].to_numpy(dtype="float64")
    estimator_class = lgb.LGBMRegressor if dataset.task == "regression" else lgb.LGBMClassifier
    model = estimator_class(**params)
    patience = training.early_stopping_rounds
    callbacks = [lgb.early_stopping(patience, first_metric_only=True, verbose=False)]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "categorical_feature in Dataset ..."
        model.fit(
            features,
            labels,
            eval_X=(valid_features,),
            eval_y=(valid_labels,),
            categorical_feature=spec.categorical_features or "auto",
            callbacks=callbacks if patience > 0 else [],
        )
    wall_time = time.perf_counter() - started
    booster = model.booster_
    best = model.best_iteration_ if patience > 0 and model.best_iteration_ else None
    rounds = best or booster.current_iteration()
    raw = booster.predict(valid_features, num_iteration=rounds, raw_score=True)
    loss = validation_loss(dataset.task, np.asarray(raw), valid_labels)
    return FittedTrial(booster, rounds, loss, wall_time)


def train_lightgbm_trial(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    dataset: DatasetRef,
    training: TrainingConfig,
    threads: int,
) -> TrialResult:
    """A tuning trial: the validation loss at the best round, the round, the training time
    (see :func:`fit_lightgbm_trial`)."""
    fitted = fit_lightgbm_trial(train, validation, dataset, training, threads)
    return TrialResult(
        validation_loss=fitted.validation_loss,
        best_iteration=fitted.rounds,
        wall_time_s=fitted.wall_time_s,
    )
