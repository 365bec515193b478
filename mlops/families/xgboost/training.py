"""XGBoost training through ``xgboost.dask`` with early stopping on the whole validation split.

Unlike ``lightgbm.dask``, XGBoost evaluates a distributed ``evals`` set itself: each worker
scores its share of the validation split and the metric is reduced across the workers, so every
worker sees the same curve and stops at the same round. The validation split is therefore
handed to ``xgboost.dask.train`` as a second Dask matrix, with the training split's bins.

The use case's parameters are named as LightGBM names them; :func:`xgboost_params` maps them
(``docs/model-families.md`` has the table).
"""

from __future__ import annotations

import time
from typing import Any

import dask.dataframe as dd
import numpy as np
import pandas as pd
import xgboost as xgb
from distributed import Client
from xgboost import dask as dxgb
from xgboost.collective import Config

from ...config import TrainingConfig
from ...dask_workers import cluster_workers
from ...dataset import TARGET_COLUMN, DatasetRef
from ...errors import DataError
from ...features import FeatureSpec, build_features
from ...prediction import ModelFacts
from .. import TrainedModel, TrialResult
from ..partitions import feature_frame, spread_partitions
from .predictor import FAMILY, XGBoostPredictor, as_float64

METRIC = {"binary": "binary_logloss", "multiclass": "multi_logloss", "regression": "rmse"}
"""The validation metric as the pipeline names it (LightGBM's names: the families compare)."""
_XGB_METRIC = {"binary": "logloss", "multiclass": "mlogloss", "regression": "rmse"}
_OBJECTIVE = {
    "binary": "binary:logistic",
    "multiclass": "multi:softprob",
    "regression": "reg:squarederror",
}
_EVAL_NAME = "validation"


# ---------------------------------------------------------------- parameters


def min_child_weight(training: TrainingConfig, dataset: DatasetRef) -> float:
    """``min_child_samples`` as XGBoost's ``min_child_weight`` (a minimum hessian sum per leaf).

    A row's hessian is 1 for squared error and ``p(1 - p)`` for log-loss, so a leaf of
    ``min_child_samples`` rows holds this much hessian at the probabilities boosting starts
    from: the class balance (uniform when classes are weighted ``balanced``). An approximation:
    leaves of confidently predicted rows hold less.
    """
    if dataset.task == "regression":
        return float(training.min_child_samples)
    if dataset.task == "multiclass" or training.class_weight == "balanced":
        share = 1.0 / max(dataset.n_classes, 2)
    else:
        share = dataset.meta_features.minority_class_fraction or 0.5
    return training.min_child_samples * share * (1.0 - share)


def xgboost_params(training: TrainingConfig, dataset: DatasetRef) -> dict[str, Any]:
    """XGBoost booster parameters for a dataset, from the config (rounds and early stopping
    are arguments of training, not parameters)."""
    params: dict[str, Any] = {
        "objective": _OBJECTIVE[dataset.task],
        "eval_metric": _XGB_METRIC[dataset.task],
        "tree_method": "hist",
        "grow_policy": "lossguide",
        "max_depth": 0,
        "max_leaves": training.num_leaves,
        "eta": training.learning_rate,
        "max_bin": training.max_bin,
        "min_child_weight": min_child_weight(training, dataset),
        "colsample_bytree": training.feature_fraction,
        "lambda": training.l2_regularization,
        "seed": training.seed,
        "verbosity": 1,
    }
    if dataset.task == "multiclass":
        params["num_class"] = dataset.n_classes
    return params | training.extra_params


def feature_types(spec: FeatureSpec) -> list[str]:
    """XGBoost's type per feature: ``c`` for the spec's categorical codes, ``q`` otherwise."""
    categorical = set(spec.categorical_features)
    return ["c" if name in categorical else "q" for name in spec.feature_names]


def balanced_weights(counts: pd.Series, n_classes: int) -> np.ndarray:
    """LightGBM's (and scikit-learn's) ``balanced`` class weights: rows / (classes x count),
    indexed by class code."""
    weights = np.ones(n_classes)
    total = float(counts.sum())
    for code, count in counts.items():
        weights[int(code)] = total / (n_classes * float(count))
    return weights


def _row_weights(labels: pd.Series, by_class: np.ndarray) -> pd.Series:
    return pd.Series(by_class[labels.to_numpy().astype(int)], index=labels.index)


def _logged_params(params: dict[str, Any], training: TrainingConfig) -> dict[str, Any]:
    return params | {
        "num_boost_round": training.n_estimators,
        "early_stopping_rounds": training.early_stopping_rounds,
        "class_weight": training.class_weight,
    }


# ---------------------------------------------------------------- on Dask


def train_xgboost_on_dask(
    client: Client,
    dataset: DatasetRef,
    training: TrainingConfig,
    work_uri: str,
    workers: list[str] | None = None,
) -> TrainedModel:
    """Train an XGBoost model on the dataset's training split across the client's workers.

    Args:
        client: A connected Dask client.
        dataset: The preprocessed dataset.
        training: Parameters, early stopping and the cluster shape.
        work_uri: Scratch space (unused: XGBoost hands the validation curve back itself).
        workers: The workers of an existing cluster to train on; default: all of them.

    Returns:
        The predictor (its booster cut to its best validation round when early stopping is
        on), with the validation curve and timings; the caller measures worker memory.

    Raises:
        DataError: if the training split is empty.
    """
    del work_uri
    if dataset.row_counts.get("train", 0) == 0:
        raise DataError(f"Dataset {dataset.version} has an empty training split.")
    params = xgboost_params(training, dataset)
    workers = workers or list(cluster_workers(client))
    started = time.perf_counter()
    dtrain, dvalid, (valid_x, valid_y) = _dask_matrices(client, dataset, training, workers)
    stopping = training.early_stopping_rounds or None
    output = dxgb.train(
        client,
        params,
        dtrain,
        num_boost_round=training.n_estimators,
        evals=[(dvalid, _EVAL_NAME)],
        early_stopping_rounds=stopping,
        verbose_eval=False,
        coll_cfg=Config(timeout=training.cluster.network_timeout_minutes * 60),
    )
    wall_time = time.perf_counter() - started
    booster: xgb.Booster = output["booster"]
    curve = _curve(output["history"])
    best = booster.best_iteration + 1 if stopping else booster.num_boosted_rounds()
    final = XGBoostPredictor(booster=booster[:best], facts=_facts(dataset))
    scores, labels = client.compute(
        [dxgb.inplace_predict(client, final.booster, valid_x), valid_y], sync=True
    )
    return TrainedModel(
        predictor=final,
        params=_logged_params(params, training),
        best_iteration=best,
        iterations_run=len(curve),
        validation_metric=METRIC[dataset.task],
        validation_curve=curve,
        validation_targets=np.asarray(labels, dtype="float64"),
        validation_scores=as_float64(np.asarray(scores), dataset.task),
        wall_time_s=wall_time,
        cluster=training.cluster,
    )


def _dask_matrices(
    client: Client, dataset: DatasetRef, training: TrainingConfig, workers: list[str]
) -> tuple[dxgb.DaskQuantileDMatrix, dxgb.DaskQuantileDMatrix, tuple[dd.DataFrame, dd.Series]]:
    """The training and validation splits as quantile matrices (the validation one with the
    training one's bins), their partitions dealt to ``workers``; and the validation features
    and labels, for scoring the kept model.

    XGBoost trains on the workers that hold the data's parts: dealing them out selects the
    workers and gives each a share.
    """
    train = spread_partitions(client, feature_frame(dataset, "train", len(workers)), workers)
    valid = spread_partitions(client, feature_frame(dataset, "validation", len(workers)), workers)
    names = dataset.feature_spec.feature_names
    train_x, train_y = train[names], train[TARGET_COLUMN]
    valid_x, valid_y = valid[names], valid[TARGET_COLUMN]
    matrix = {
        "feature_types": feature_types(dataset.feature_spec),
        "enable_categorical": True,
        "max_bin": training.max_bin,
    }
    weight = _class_weights(client, train_y, training, dataset)
    dtrain = dxgb.DaskQuantileDMatrix(client, train_x, train_y, weight=weight, **matrix)
    dvalid = dxgb.DaskQuantileDMatrix(client, valid_x, valid_y, ref=dtrain, **matrix)
    return dtrain, dvalid, (valid_x, valid_y)


def _class_weights(
    client: Client, labels: dd.Series, training: TrainingConfig, dataset: DatasetRef
) -> dd.Series | None:
    """Per-row ``balanced`` weights for a classifier that asks for them, else None."""
    if training.class_weight != "balanced" or dataset.task == "regression":
        return None
    counts = client.compute(labels.value_counts(), sync=True)
    by_class = balanced_weights(counts, dataset.n_classes)
    return labels.map_partitions(_row_weights, by_class, meta=(TARGET_COLUMN, "float64"))


def _curve(history: dict[str, Any]) -> list[float]:
    """The validation curve of the metric early stopping watched (the last one evaluated)."""
    return [float(v) for v in list(history[_EVAL_NAME].values())[-1]]


def _facts(dataset: DatasetRef) -> ModelFacts:
    return ModelFacts(
        spec=dataset.feature_spec,
        task=dataset.task,
        classes=dataset.classes,
        family=FAMILY,
        target=dataset.target,
    )


# ---------------------------------------------------------------- in one process


def train_xgboost_trial(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    dataset: DatasetRef,
    training: TrainingConfig,
    threads: int,
) -> TrialResult:
    """One tuning trial: ``xgboost.train`` in this process on ``threads`` threads, early
    stopping on the whole validation split as on Dask."""
    spec = dataset.feature_spec
    params = xgboost_params(training, dataset) | {"nthread": threads}
    labels = train[TARGET_COLUMN].to_numpy(dtype="float64")
    weight = None
    if training.class_weight == "balanced" and dataset.task != "regression":
        counts = pd.Series(labels).value_counts()
        weight = balanced_weights(counts, dataset.n_classes)[labels.astype(int)]
    matrix = {
        "feature_types": feature_types(spec),
        "enable_categorical": True,
        "max_bin": training.max_bin,
        "nthread": threads,
    }
    started = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(build_features(train, spec), labels, weight=weight, **matrix)
    dvalid = xgb.QuantileDMatrix(
        build_features(validation, spec),
        validation[TARGET_COLUMN].to_numpy(dtype="float64"),
        ref=dtrain,
        **matrix,
    )
    history: dict[str, Any] = {}
    stopping = training.early_stopping_rounds or None
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=training.n_estimators,
        evals=[(dvalid, _EVAL_NAME)],
        early_stopping_rounds=stopping,
        evals_result=history,
        verbose_eval=False,
    )
    curve = _curve(history)
    best = booster.best_iteration if stopping else len(curve) - 1
    return TrialResult(
        validation_loss=float(curve[best]),
        best_iteration=best + 1,
        wall_time_s=time.perf_counter() - started,
    )


def xgboost_has_cuda() -> bool:
    """Whether this XGBoost build can train on a CUDA GPU (the ``xgboost-cpu`` wheel cannot)."""
    return bool(xgb.build_info().get("USE_CUDA"))
