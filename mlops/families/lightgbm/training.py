"""LightGBM training through ``lightgbm.dask`` with early stopping on the whole validation split.

``lightgbm.dask`` has no early stopping of its own: each worker only sees its shard of an
``eval_set``, computes a different score and stops at a different round, and the others then
hang on the network (LightGBM issues #3712, #6351). Here every worker scores the *whole*
validation split itself with :class:`GlobalValidationScorer`; data-parallel LightGBM builds
identical trees on every worker, so all workers compute the same curve and stop together.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from distributed import Client, get_worker, wait

from ...config import TaskType, TrainingConfig
from ...dask_workers import cluster_workers
from ...dataset import TARGET_COLUMN, DatasetRef, read_split
from ...errors import DataError
from ...features import FeatureSpec, build_features
from ...prediction import ModelFacts, class_scores
from ...storage import open_url, store_options
from .. import TrainedModel
from ..partitions import feature_partitions, read_feature_matrix
from .predictor import FAMILY, LightGBMPredictor

_METRIC = {"binary": "binary_logloss", "multiclass": "multi_logloss", "regression": "rmse"}


# ---------------------------------------------------------------- validation scoring


def validation_loss(task: TaskType, raw_scores: np.ndarray, labels: np.ndarray) -> float:
    """Log-loss (classification) or RMSE (regression) of raw model scores."""
    if task == "regression":
        return float(np.sqrt(np.mean((raw_scores - labels) ** 2)))
    eps = 1e-15
    if task == "binary":
        p = np.clip(1.0 / (1.0 + np.exp(-raw_scores)), eps, 1 - eps)
        # log(p) where the label is 1, log(1 - p) where it is 0: the same numbers as
        # labels * log(p) + (1 - labels) * log(1 - p), for half the logarithms
        return float(-np.mean(np.log(np.where(labels == 1, p, 1 - p))))
    shifted = raw_scores - raw_scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(labels)), labels.astype(int)]))


class GlobalValidationScorer:
    """LightGBM callback: score every boosting round on the full validation split.

    Keeps running raw scores (each round's trees added to them), so each round costs one tree
    over the validation rows; rounds are scored :attr:`batch_rounds` at a time, which reads
    the rows once for all of them. Stops training after ``patience`` rounds without improvement
    (0 = never). When training ends on this worker it writes the curve, and the validation
    scores of the round the model keeps, under ``curve_path``, so the driver can plot them
    without scoring the validation split again.
    """

    order = 30
    before_iteration = False
    batch_rounds = 10
    """Rounds scored together; scoring lags training by up to this many rounds less one, so
    early stopping can train as many rounds past the stopping round (the model is cut back)."""

    def __init__(
        self,
        validation_uri: str,
        spec: FeatureSpec,
        task: TaskType,
        n_classes: int,
        patience: int,
        curve_path: str | None,
        validation_options: dict[str, Any] | None = None,
        curve_options: dict[str, Any] | None = None,
    ) -> None:
        self.validation_uri = validation_uri
        self.spec = spec
        self.task = task
        self.n_classes = n_classes
        self.patience = patience
        self.curve_path = curve_path
        # Storage options are resolved by the client: a worker need not read the settings.
        self.validation_options = validation_options or {}
        self.curve_options = curve_options or {}
        self._features: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._scores: np.ndarray | None = None
        self._kept: np.ndarray | None = None
        self.curve: list[float] = []

    def _load(self) -> None:
        fs, path = open_url(self.validation_uri, self.validation_options)
        frame = pd.read_parquet(path, filesystem=fs)
        self._features = build_features(frame, self.spec).to_numpy()
        self._labels = frame[TARGET_COLUMN].to_numpy(dtype="float64")
        shape = (len(frame), self.n_classes) if self.task == "multiclass" else (len(frame),)
        self._scores = np.zeros(shape)

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        if self._features is None:
            self._load()
        last_round = env.iteration == env.end_iteration - 1
        batch = self.batch_rounds if _leaves_are_outputs(env.params) else 1
        if env.iteration + 1 - len(self.curve) < batch and not last_round:
            return  # the next rounds are scored together
        for increment in self._new_rounds(env.model, env.iteration + 1, env.params):
            self._scores += increment
            self.curve.append(validation_loss(self.task, self._scores, self._labels))
            best = int(np.argmin(self.curve))
            if self.patience > 0 and best == len(self.curve) - 1:
                self._kept = self._scores.copy()  # the model will be cut back to this round
            stop = self.patience > 0 and len(self.curve) - 1 - best >= self.patience
            done = last_round and len(self.curve) == env.iteration + 1
            if (stop or done) and self.curve_path:
                self._write_curve(env.params.get("local_listen_port", 0))
            if stop:
                score = [("validation", _METRIC[self.task], self.curve[best], False)]
                raise lgb.callback.EarlyStopException(best, score)

    def _new_rounds(
        self, model: lgb.Booster, rounds: int, params: dict[str, Any]
    ) -> Iterator[np.ndarray | float]:
        """Each unscored round's raw validation scores (what its trees add), in order.

        One ``pred_leaf`` prediction finds the rows' leaves in all of the rounds' trees, and
        each tree's leaf values are its raw scores: the very numbers ``predict(raw_score=True,
        start_iteration=i, num_iteration=1)`` gives, at a fraction of the cost per round (that
        one reads every row anew). Trees whose output is not their leaf value (linear trees), or
        that later rounds change (dart, rf), are predicted round by round, each right after
        its round (see ``__call__``).
        """
        first, per_round = len(self.curve), model.num_model_per_iteration()
        if not _leaves_are_outputs(params):
            for start in range(first, rounds):
                yield model.predict(
                    self._features, start_iteration=start, num_iteration=1, raw_score=True
                )
            return
        built = min(rounds, model.current_iteration()) - first  # fewer if training finished
        leaves = (
            model.predict(
                self._features, start_iteration=first, num_iteration=built, pred_leaf=True
            )
            if built > 0
            else None
        )
        for offset in range(rounds - first):
            if offset >= built:
                yield 0.0  # no tree this round: predict() would add nothing
                continue
            columns = leaves[:, offset * per_round : (offset + 1) * per_round]
            trees = range((first + offset) * per_round, (first + offset + 1) * per_round)
            outputs = [
                _leaf_outputs(model, tree, column)
                for tree, column in zip(trees, columns.T, strict=True)
            ]
            yield outputs[0] if self.task != "multiclass" else np.column_stack(outputs)

    @property
    def labels(self) -> np.ndarray | None:
        """The validation labels (once the first round has been scored)."""
        return self._labels

    @property
    def kept_scores(self) -> np.ndarray | None:
        """Raw validation scores of the round the model keeps (the best one with early stopping)."""
        return self._kept if self.patience > 0 else self._scores

    def _write_curve(self, port: int) -> None:
        fs, base = open_url(self.curve_path, self.curve_options)
        fs.makedirs(base, exist_ok=True)
        with fs.open(f"{base}/scores-{port}.npz", "wb") as handle:
            np.savez(handle, raw_scores=self.kept_scores, labels=self._labels)
        with fs.open(f"{base}/curve-{port}.json", "w") as handle:  # written last: marks completion
            json.dump(self.curve, handle)


_BOOSTING_ALIASES = ("boosting", "boosting_type", "boost")
_LINEAR_TREE_ALIASES = ("linear_tree", "linear_trees")


def _leaves_are_outputs(params: dict[str, Any]) -> bool:
    """Whether each tree's raw output is its leaf value and stays so (gbdt, goss; no linear trees)."""
    boosting = next((params[k] for k in _BOOSTING_ALIASES if k in params), "gbdt")
    linear = any(params.get(k) for k in _LINEAR_TREE_ALIASES)
    return boosting in ("gbdt", "gbrt", "goss") and not linear


def _leaf_outputs(model: lgb.Booster, tree: int, leaves: np.ndarray) -> np.ndarray:
    """The output of tree ``tree`` for rows that fell in ``leaves``."""
    values = np.array([model.get_leaf_output(tree, leaf) for leaf in range(int(leaves.max()) + 1)])
    return values[leaves]


def read_validation_output(
    curve_path: str,
) -> tuple[list[float], np.ndarray | None, np.ndarray | None]:
    """The validation curve, labels and kept raw scores written by one worker.

    All workers write the same values; any one complete set will do.
    """
    fs, base = open_url(curve_path)
    files = sorted(fs.glob(f"{base}/curve-*.json"))
    if not files:
        return [], None, None
    with fs.open(files[0], "r") as handle:
        curve = json.load(handle)
    with fs.open(files[0].replace("/curve-", "/scores-").replace(".json", ".npz"), "rb") as handle:
        arrays = np.load(handle)
        return curve, arrays["labels"], arrays["raw_scores"]


def scores_from_raw(task: TaskType, raw_scores: np.ndarray) -> np.ndarray:
    """Class scores as :func:`mlops.prediction.class_scores` gives them, from raw model output."""
    if task == "binary":
        return 1.0 / (1.0 + np.exp(-raw_scores))
    if task == "multiclass":
        shifted = np.exp(raw_scores - raw_scores.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return raw_scores


# ---------------------------------------------------------------- training


def lightgbm_params(training: TrainingConfig, dataset: DatasetRef) -> dict[str, Any]:
    """LightGBM parameters for a dataset, from the config."""
    cluster = training.cluster
    params: dict[str, Any] = {
        "n_estimators": training.n_estimators,
        "learning_rate": training.learning_rate,
        "num_leaves": training.num_leaves,
        "max_bin": training.max_bin,
        "min_child_samples": training.min_child_samples,
        "colsample_bytree": training.feature_fraction,
        "reg_lambda": training.l2_regularization,
        "random_state": training.seed,
        "time_out": cluster.network_timeout_minutes,
        "verbose": -1,
    }
    if dataset.task == "multiclass":
        params |= {"objective": "multiclass", "num_class": dataset.n_classes}
    elif dataset.task == "binary":
        params["objective"] = "binary"
    else:
        params["objective"] = "regression"
    if training.class_weight and dataset.task != "regression":
        params["class_weight"] = training.class_weight
    return params | training.extra_params


@dataclass
class FitOutput:
    """A fitted booster and what its validation scorer saw (labels and scores None if nothing)."""

    booster: lgb.Booster
    curve: list[float]
    labels: np.ndarray | None
    raw_scores: np.ndarray | None


def train_lightgbm_on_dask(
    client: Client,
    dataset: DatasetRef,
    training: TrainingConfig,
    work_uri: str,
    workers: list[str] | None = None,
) -> TrainedModel:
    """Train a LightGBM model on the dataset's training split across the client's workers.

    On several workers, ``lightgbm.dask`` trains data-parallel. On one, a single task reads
    the split on that worker and fits there (:func:`fit_on_this_worker`): the same model,
    without Dask moving the data in pieces.

    Args:
        client: A connected Dask client.
        dataset: The preprocessed dataset.
        training: Parameters, early stopping and the cluster shape.
        work_uri: Scratch folder for the validation curve.
        workers: The workers of an existing cluster to train on; default: all of them.

    Returns:
        The predictor (its booster cut to its best validation round when early stopping is
        on), with the validation curve and timings; the caller measures worker memory.

    Raises:
        DataError: if the training split is empty.
    """
    if dataset.row_counts.get("train", 0) == 0:
        raise DataError(f"Dataset {dataset.version} has an empty training split.")
    params = lightgbm_params(training, dataset)
    targets = workers or sorted(cluster_workers(client))
    started = time.perf_counter()
    if len(targets) == 1:
        scorer = validation_scorer(dataset, training, None)
        fit = fit_on_one_worker(client, dataset, params, scorer, targets[0])
    else:
        scorer = validation_scorer(dataset, training, work_uri)
        fit = fit_data_parallel(client, dataset, params, scorer, workers)
        fit = FitOutput(fit.booster, *read_validation_output(work_uri))
    wall_time = time.perf_counter() - started
    return trained_model(fit, dataset, training, params, wall_time)


def validation_scorer(
    dataset: DatasetRef, training: TrainingConfig, work_uri: str | None
) -> GlobalValidationScorer:
    """The per-round scorer of the dataset's validation split (curve files under ``work_uri``)."""
    uri = dataset.split_uris["validation"]
    return GlobalValidationScorer(
        uri,
        dataset.feature_spec,
        dataset.task,
        dataset.n_classes,
        training.early_stopping_rounds,
        work_uri,
        store_options(uri),
        store_options(work_uri) if work_uri else None,
    )


WORKER_DECIDES = frozenset(
    {
        "num_threads",
        "n_jobs",
        "nthread",
        "nthreads",
        "num_thread",
        "machines",
        "workers",
        "nodes",
        "num_machines",
        "num_machine",
        "local_listen_port",
        "local_port",
        "port",
        "listen_port",
        "machine_list_filename",
        "machine_list_file",
        "machine_list",
        "mlist",
    }
)
"""Parameters (and their aliases) that ``lightgbm.dask`` sets from the cluster, overriding a
config's ``extra_params`` with a warning: on one worker, its thread count and no network."""


def _estimator_class(task: TaskType) -> type[lgb.LGBMModel]:
    return lgb.LGBMRegressor if task == "regression" else lgb.LGBMClassifier


def fit_on_this_worker(
    dataset: DatasetRef,
    params: dict[str, Any],
    scorer: GlobalValidationScorer,
    train_options: dict[str, Any],
) -> FitOutput:
    """Read the training split and fit on the Dask worker this runs on, with all its threads.

    The same estimator, parameters and rows (in the split files' order) as ``lightgbm.dask``
    on one worker, so the same trees.
    """
    spec = dataset.feature_spec
    features, labels = read_feature_matrix(dataset.split_uris["train"], spec, train_options)
    threads = get_worker().state.nthreads
    own = {k: v for k, v in params.items() if k not in WORKER_DECIDES}
    estimator = _estimator_class(dataset.task)(**own, num_threads=threads)
    estimator.fit(
        features,
        labels,
        feature_name=spec.feature_names,
        categorical_feature=spec.categorical_features or "auto",
        callbacks=[scorer],
    )
    return FitOutput(estimator.booster_, scorer.curve, scorer.labels, scorer.kept_scores)


def fit_on_one_worker(
    client: Client,
    dataset: DatasetRef,
    params: dict[str, Any],
    scorer: GlobalValidationScorer,
    worker: str,
) -> FitOutput:
    """Run :func:`fit_on_this_worker` as one task on ``worker``."""
    future = client.submit(
        fit_on_this_worker,
        dataset,
        params,
        scorer,
        store_options(dataset.split_uris["train"]),
        workers=[worker],
        allow_other_workers=False,
        pure=False,
    )
    return future.result()


def fit_data_parallel(
    client: Client,
    dataset: DatasetRef,
    params: dict[str, Any],
    scorer: GlobalValidationScorer,
    workers: list[str] | None,
) -> FitOutput:
    """Data-parallel training with ``lightgbm.dask`` on ``workers`` (default: all).

    Returns:
        The booster; the curve is in the scorer's files, not here.
    """
    estimator_class = (
        lgb.DaskLGBMRegressor if dataset.task == "regression" else lgb.DaskLGBMClassifier
    )
    model = estimator_class(client=client, **params)
    n_workers = len(workers or cluster_workers(client))
    features, labels = feature_partitions(dataset, "train", n_workers)
    warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
    if workers:  # LightGBM trains where the data's parts are: placing them selects the workers
        features, labels = client.persist([features, labels], workers=workers)
        wait([features, labels])
    model.fit(
        features,
        labels,
        categorical_feature=dataset.feature_spec.categorical_features or "auto",
        callbacks=[scorer],
    )
    return FitOutput(model.booster_, [], None, None)


def trained_model(
    fit: FitOutput,
    dataset: DatasetRef,
    training: TrainingConfig,
    params: dict[str, Any],
    wall_time: float,
) -> TrainedModel:
    """The trained model: the booster cut to its best round when early stopping is on."""
    booster, curve = fit.booster, fit.curve
    stopping = training.early_stopping_rounds > 0 and curve
    best = int(np.argmin(curve)) + 1 if stopping else booster.current_iteration()
    final = LightGBMPredictor(
        booster=lgb.Booster(model_str=booster.model_to_string(num_iteration=best)),
        facts=ModelFacts(
            spec=dataset.feature_spec,
            task=dataset.task,
            classes=dataset.classes,
            family=FAMILY,
            target=dataset.target,
        ),
    )
    if fit.raw_scores is None:  # no worker finished its callback: score the validation split here
        labels, scores = _validation_scores(final, dataset)
    else:
        labels, scores = fit.labels, scores_from_raw(dataset.task, fit.raw_scores)
    return TrainedModel(
        predictor=final,
        params=params,
        best_iteration=best,
        iterations_run=len(curve) or booster.current_iteration(),
        validation_metric=_METRIC[dataset.task],
        validation_curve=curve,
        validation_targets=labels,
        validation_scores=scores,
        wall_time_s=wall_time,
        cluster=training.cluster,
    )


def _validation_scores(
    predictor: LightGBMPredictor, dataset: DatasetRef
) -> tuple[np.ndarray, np.ndarray]:
    frame = read_split(dataset, "validation")
    predictions = predictor.predict(frame)
    return frame[TARGET_COLUMN].to_numpy(dtype="float64"), class_scores(
        predictions, dataset.task, dataset.classes
    )


def lightgbm_has_cuda() -> bool:
    """Whether this LightGBM build can train on a CUDA GPU (the PyPI wheel cannot)."""
    try:
        data = lgb.Dataset(np.arange(20.0).reshape(10, 2), label=np.arange(10.0) % 2)
        lgb.train({"device_type": "cuda", "verbose": -1}, data, num_boost_round=1)
    except lgb.basic.LightGBMError:
        return False
    return True
