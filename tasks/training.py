"""Training: LightGBM through ``lightgbm.dask`` with early stopping on the whole validation split.

``lightgbm.dask`` has no early stopping of its own: each worker only sees its shard of an
``eval_set``, computes a different score and stops at a different round, and the others then
hang on the network (LightGBM issues #3712, #6351). Here every worker scores the *whole*
validation split itself with :class:`GlobalValidationScorer`; data-parallel LightGBM builds
identical trees on every worker, so all workers compute the same curve and stop together.
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import fsspec
import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
from distributed import Client, wait
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict

from infra.allocator.allocation import Allocation
from infra.allocator.history import RunProfile
from infra.allocator.profiling import (
    TrainingOutcomeError,
    cluster_config,
    job_features,
    measure_training,
    profile_row,
)
from infra.allocator.report import allocation_params, allocation_tags, outcome_metrics
from infra.dask_cluster import worker_peak_memory
from mlops.config import ClusterConfig, PipelineConfig, TaskType, TrainingConfig
from mlops.dataset import TARGET_COLUMN, DatasetRef
from mlops.errors import DataError
from mlops.features import FeatureSpec, build_features
from mlops.prediction import class_scores, predict_frame
from mlops.settings import get_settings
from model_registry import tracking
from model_registry.registry import log_pipeline_model
from tasks.evaluation import evaluation_figures, feature_importance_figure, learning_curve_figure
from tasks.preprocessing import read_sample, read_split
from tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

_METRIC = {"binary": "binary_logloss", "multiclass": "multi_logloss", "regression": "rmse"}


class TrainedModel(BaseModel):
    """What a training run produced, before it is logged."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    booster: lgb.Booster
    params: dict[str, Any]
    best_iteration: int
    iterations_run: int
    validation_metric: str
    validation_curve: list[float]
    validation_targets: np.ndarray
    validation_scores: np.ndarray
    wall_time_s: float
    peak_worker_memory_bytes: dict[str, int]
    cluster: ClusterConfig


# ---------------------------------------------------------------- validation scoring


def validation_loss(task: TaskType, raw_scores: np.ndarray, labels: np.ndarray) -> float:
    """Log-loss (classification) or RMSE (regression) of raw model scores."""
    if task == "regression":
        return float(np.sqrt(np.mean((raw_scores - labels) ** 2)))
    eps = 1e-15
    if task == "binary":
        p = np.clip(1.0 / (1.0 + np.exp(-raw_scores)), eps, 1 - eps)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    shifted = raw_scores - raw_scores.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(labels)), labels.astype(int)]))


class GlobalValidationScorer:
    """LightGBM callback: score every boosting round on the full validation split.

    Keeps running raw scores (one tree's prediction per round), so each round costs one tree
    over the validation rows. Stops training after ``patience`` rounds without improvement
    (0 = never). When training ends on this worker it writes the curve, and the validation
    scores of the round the model keeps, under ``curve_path``, so the driver can plot them
    without scoring the validation split again.
    """

    order = 30
    before_iteration = False

    def __init__(
        self,
        validation_uri: str,
        spec: FeatureSpec,
        task: TaskType,
        n_classes: int,
        patience: int,
        curve_path: str,
    ) -> None:
        self.validation_uri = validation_uri
        self.spec = spec
        self.task = task
        self.n_classes = n_classes
        self.patience = patience
        self.curve_path = curve_path
        self._features: np.ndarray | None = None
        self._labels: np.ndarray | None = None
        self._scores: np.ndarray | None = None
        self._kept: np.ndarray | None = None
        self.curve: list[float] = []

    def _load(self) -> None:
        frame = pd.read_parquet(self.validation_uri)
        self._features = build_features(frame, self.spec).to_numpy()
        self._labels = frame[TARGET_COLUMN].to_numpy(dtype="float64")
        shape = (len(frame), self.n_classes) if self.task == "multiclass" else (len(frame),)
        self._scores = np.zeros(shape)

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        if self._features is None:
            self._load()
        self._scores += env.model.predict(
            self._features, start_iteration=env.iteration, num_iteration=1, raw_score=True
        )
        self.curve.append(validation_loss(self.task, self._scores, self._labels))
        best = int(np.argmin(self.curve))
        if self.patience > 0 and best == len(self.curve) - 1:
            self._kept = self._scores.copy()  # the model will be cut back to this round
        last_round = env.iteration == env.end_iteration - 1
        stop = self.patience > 0 and len(self.curve) - 1 - best >= self.patience
        if stop or last_round:
            self._write_curve(env.params.get("local_listen_port", 0))
        if stop:
            score = [("validation", _METRIC[self.task], self.curve[best], False)]
            raise lgb.callback.EarlyStopException(best, score)

    def _write_curve(self, port: int) -> None:
        fs, base = fsspec.core.url_to_fs(self.curve_path)
        fs.makedirs(base, exist_ok=True)
        kept = self._kept if self.patience > 0 else self._scores
        with fs.open(f"{base}/scores-{port}.npz", "wb") as handle:
            np.savez(handle, raw_scores=kept, labels=self._labels)
        with fs.open(f"{base}/curve-{port}.json", "w") as handle:  # written last: marks completion
            json.dump(self.curve, handle)


def read_validation_output(
    curve_path: str,
) -> tuple[list[float], np.ndarray | None, np.ndarray | None]:
    """The validation curve, labels and kept raw scores written by one worker.

    All workers write the same values; any one complete set will do.
    """
    fs, base = fsspec.core.url_to_fs(curve_path)
    files = sorted(fs.glob(f"{base}/curve-*.json"))
    if not files:
        return [], None, None
    with fs.open(files[0], "r") as handle:
        curve = json.load(handle)
    with fs.open(files[0].replace("/curve-", "/scores-").replace(".json", ".npz"), "rb") as handle:
        arrays = np.load(handle)
        return curve, arrays["labels"], arrays["raw_scores"]


def scores_from_raw(task: TaskType, raw_scores: np.ndarray) -> np.ndarray:
    """Class scores as :func:`mlops.pyfunc.class_scores` gives them, from raw model output."""
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


def _features_and_label(frame: pd.DataFrame, spec: FeatureSpec) -> pd.DataFrame:
    return build_features(frame, spec).assign(**{TARGET_COLUMN: frame[TARGET_COLUMN].to_numpy()})


def _feature_partitions(
    dataset: DatasetRef, split: str, min_partitions: int
) -> tuple[dd.DataFrame, dd.Series]:
    """Features and labels of a split as Dask collections with identical partitions.

    Both come out of one ``map_partitions`` call, so Dask cannot plan the label column's read
    differently (it merges small files when it reads fewer columns) and misalign the two.
    """
    frame = dd.read_parquet(dataset.split_uris[split])
    if frame.npartitions < min_partitions:  # every worker needs a share, or it sits idle
        frame = frame.repartition(npartitions=min_partitions)
    spec = dataset.feature_spec
    meta = pd.DataFrame({name: pd.Series(dtype="float32") for name in spec.feature_names})
    meta[TARGET_COLUMN] = pd.Series(dtype="float64")
    combined = frame.map_partitions(_features_and_label, spec, meta=meta)
    return combined[spec.feature_names], combined[TARGET_COLUMN]


def train_lightgbm_on_dask(
    client: Client,
    dataset: DatasetRef,
    training: TrainingConfig,
    work_uri: str,
    workers: list[str] | None = None,
) -> TrainedModel:
    """Train a LightGBM model on the dataset's training split across the client's workers.

    Args:
        client: A connected Dask client (see ``infra.dask_cluster.dask_client``).
        dataset: The preprocessed dataset.
        training: Parameters, early stopping and the cluster shape.
        work_uri: Scratch folder for the validation curve.
        workers: The workers of an existing cluster to train on; default: all of them.

    Returns:
        The booster (cut to its best validation round when early stopping is on), with the
        validation curve, timings and worker memory.

    Raises:
        DataError: if the training split is empty.
    """
    if dataset.row_counts.get("train", 0) == 0:
        raise DataError(f"Dataset {dataset.version} has an empty training split.")
    params = lightgbm_params(training, dataset)
    estimator_class = (
        lgb.DaskLGBMRegressor if dataset.task == "regression" else lgb.DaskLGBMClassifier
    )
    model = estimator_class(client=client, **params)
    n_workers = len(workers or client.scheduler_info(n_workers=-1)["workers"])
    features, labels = _feature_partitions(dataset, "train", n_workers)
    scorer = GlobalValidationScorer(
        dataset.split_uris["validation"],
        dataset.feature_spec,
        dataset.task,
        dataset.n_classes,
        training.early_stopping_rounds,
        work_uri,
    )
    started = time.perf_counter()
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
    wall_time = time.perf_counter() - started
    curve, labels, raw_scores = read_validation_output(work_uri)
    booster = model.booster_
    stopping = training.early_stopping_rounds > 0 and curve
    best = int(np.argmin(curve)) + 1 if stopping else booster.current_iteration()
    final = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
    if raw_scores is None:  # no worker finished its callback: score the validation split here
        labels, scores = _validation_scores(final, dataset)
    else:
        scores = scores_from_raw(dataset.task, raw_scores)
    return TrainedModel(
        booster=final,
        params=params,
        best_iteration=best,
        iterations_run=len(curve) or booster.current_iteration(),
        validation_metric=_METRIC[dataset.task],
        validation_curve=curve,
        validation_targets=labels,
        validation_scores=scores,
        wall_time_s=wall_time,
        peak_worker_memory_bytes=worker_peak_memory(client, workers),
        cluster=training.cluster,
    )


def feature_importance(booster: lgb.Booster) -> pd.DataFrame:
    """Gain and split importance per feature, most important first."""
    return pd.DataFrame(
        {
            "feature": booster.feature_name(),
            "gain": booster.feature_importance("gain"),
            "split": booster.feature_importance("split"),
        }
    ).sort_values("gain", ascending=False, ignore_index=True)


# ---------------------------------------------------------------- logging and Prefect tasks


class TrainingResult(BaseModel):
    """The reference the train stage hands on: where the model is and how training went."""

    run_id: str
    model_uri: str
    best_iteration: int
    iterations_run: int
    validation_metric: str
    validation_score: float
    wall_time_s: float
    time_per_iteration_s: float
    peak_worker_memory_bytes: int
    cluster: ClusterConfig
    allocation: Allocation | None = None


def log_training(
    client: MlflowClient,
    experiment_id: str,
    dataset: DatasetRef,
    trained: TrainedModel,
    parent_run_id: str | None,
    tags: dict[str, str],
    extra_params: dict[str, Any] | None = None,
    extra_metrics: dict[str, float] | None = None,
) -> TrainingResult:
    """Log a training run: params, the per-round validation curve, plots, inputs and the model."""
    with tracking.stage_run(client, experiment_id, "train", parent_run_id, tags) as run:
        run_id = run.run_id
        cluster = trained.cluster
        tracking.log_params(
            client,
            run_id,
            {
                **trained.params,
                **(extra_params or {}),
                "best_iteration": trained.best_iteration,
                "dataset.version": dataset.version,
                "cluster.n_workers": cluster.n_workers,
                "cluster.threads_per_worker": cluster.threads_per_worker,
                "cluster.memory_limit": cluster.memory_limit,
                "cluster.scheduler": cluster.scheduler_address or "local",
            },
        )
        tracking.log_metric_history(
            client, run_id, f"validation_{trained.validation_metric}", trained.validation_curve
        )
        per_iteration = trained.wall_time_s / max(trained.iterations_run, 1)
        peak = max(trained.peak_worker_memory_bytes.values(), default=0)
        best_score = (
            trained.validation_curve[trained.best_iteration - 1]
            if trained.validation_curve
            else float("nan")
        )
        tracking.log_metrics(
            client,
            run_id,
            {
                "training_time_s": trained.wall_time_s,
                "time_per_iteration_s": per_iteration,
                "iterations_run": trained.iterations_run,
                "peak_worker_memory_mb": peak / 2**20,
                f"best_validation_{trained.validation_metric}": best_score,
                **(extra_metrics or {}),
            },
        )
        importance = feature_importance(trained.booster)
        tracking.log_figures(
            client,
            run_id,
            {
                "feature_importance": feature_importance_figure(importance),
                "learning_curve": learning_curve_figure(
                    trained.validation_curve, trained.best_iteration, trained.validation_metric
                ),
            },
        )
        client.log_text(run_id, importance.to_csv(index=False), "feature_importance.csv")
        tracking.log_figures(
            client,
            run_id,
            evaluation_figures(
                dataset.task,
                trained.validation_targets,
                trained.validation_scores,
                dataset.classes,
                "validation",
            ),
        )
        log_dataset_inputs(run_id, dataset)
        model_uri = log_pipeline_model(run_id, trained.booster, dataset, read_sample(dataset))
    return TrainingResult(
        run_id=run_id,
        model_uri=model_uri,
        best_iteration=trained.best_iteration,
        iterations_run=trained.iterations_run,
        validation_metric=trained.validation_metric,
        validation_score=best_score,
        wall_time_s=trained.wall_time_s,
        time_per_iteration_s=per_iteration,
        peak_worker_memory_bytes=peak,
        cluster=cluster,
    )


def _validation_scores(booster: lgb.Booster, dataset: DatasetRef) -> tuple[np.ndarray, np.ndarray]:
    frame = read_split(dataset, "validation")
    predictions = predict_frame(booster, dataset.feature_spec, dataset.task, dataset.classes, frame)
    return frame[TARGET_COLUMN].to_numpy(dtype="float64"), class_scores(
        predictions, dataset.task, dataset.classes
    )


def log_dataset_inputs(run_id: str, dataset: DatasetRef) -> None:
    """Attach the train and validation splits to the run as MLflow dataset inputs (digest = version)."""
    schema = mlflow.types.Schema(
        [
            mlflow.types.ColSpec(mlflow.types.DataType.string, c)
            for c in dataset.feature_spec.input_columns
        ]
    )
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "source can be interpreted in multiple ways"
        for split, context in (("train", "training"), ("validation", "validation")):
            uri = dataset.split_uris[split]
            source = resolve_dataset_source(uri if "://" in uri else Path(uri).resolve().as_uri())
            meta = MetaDataset(
                source=source, name=f"{dataset.name}-{split}", digest=dataset.version, schema=schema
            )
            mlflow.log_input(meta, context=context)


class TrainingAttempt(BaseModel):
    """One try at training on an allocated cluster: the model if it worked, and its history row."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trained: TrainedModel | None
    profile: RunProfile
    error: str | None = None


def lightgbm_has_cuda() -> bool:
    """Whether this LightGBM build can train on a CUDA GPU (the PyPI wheel cannot)."""
    try:
        data = lgb.Dataset(np.arange(20.0).reshape(10, 2), label=np.arange(10.0) % 2)
        lgb.train({"device_type": "cuda", "verbose": -1}, data, num_boost_round=1)
    except lgb.basic.LightGBMError:
        return False
    return True


def training_for_allocation(training: TrainingConfig, allocation: Allocation) -> TrainingConfig:
    """The training config with the allocated cluster (and LightGBM's CUDA device for a GPU)."""
    extra = dict(training.extra_params)
    if allocation.gpu:
        if lightgbm_has_cuda():
            extra["device_type"] = "cuda"
        else:
            logger.warning(
                "The allocation asks for a GPU but this LightGBM build has no CUDA support: "
                "training on CPU. Run the train-gpu deployment's image for GPU training."
            )
    return training.model_copy(
        update={
            "cluster": cluster_config(allocation.shape, training.cluster),
            "extra_params": extra,
        }
    )


def train_on_allocation(
    dataset: DatasetRef, training: TrainingConfig, allocation: Allocation, work_uri: str
) -> TrainingAttempt:
    """Train on the allocated cluster and measure the run, whether it succeeds or fails."""
    job = job_features(dataset, training)
    settings = get_settings()
    scheduler = training.cluster.scheduler_address or settings.dask_scheduler_address
    kind = "scheduler" if scheduler else settings.resolved_dask_cluster
    common = {
        "use_case": dataset.name,
        "dataset_version": dataset.version,
        "backend": kind,
        "predicted": (allocation.predicted_wall_time_s, allocation.predicted_peak_memory_bytes),
    }
    configured = training_for_allocation(training, allocation)
    try:
        trained, startup, wall = measure_training(
            dataset,
            configured,
            allocation.shape,
            work_uri,
            scheduler_address=scheduler,
            cluster_kind=kind,
        )
    except TrainingOutcomeError as failure:
        profile = profile_row(
            job,
            allocation.shape,
            **common,
            status=failure.status,
            startup_s=0.0,
            wall_time_s=failure.elapsed_s,
        )
        return TrainingAttempt(trained=None, profile=profile, error=str(failure))
    curve = trained.validation_curve
    profile = profile_row(
        job,
        allocation.shape,
        **common,
        status="success",
        startup_s=startup,
        wall_time_s=wall,
        iterations=trained.iterations_run,
        peak_memory_bytes=max(trained.peak_worker_memory_bytes.values(), default=0),
        final_metric=curve[trained.best_iteration - 1] if curve else None,
        metric_name=trained.validation_metric,
    )
    return TrainingAttempt(trained=trained, profile=profile)


@task(name="train-lightgbm-on-dask", timeout_seconds=6 * 3600, persist_result=False)
def train_model_task(
    dataset: DatasetRef, training: TrainingConfig, allocation: Allocation, work_uri: str
) -> TrainingAttempt:
    """Build the allocated Dask cluster, train, measure, and tear the cluster down."""
    logger = get_run_logger()
    logger.info(
        "Training on %s (%s); %d training rows",
        allocation.shape.label(),
        training.cluster.scheduler_address or "LocalCluster",
        dataset.row_counts["train"],
    )
    attempt = train_on_allocation(dataset, training, allocation, work_uri)
    run = attempt.profile
    if attempt.trained is None:
        logger.warning(
            "Training failed (%s) after %.1fs: %s", run.status, run.wall_time_s, attempt.error
        )
        return attempt
    trained = attempt.trained
    logger.info(
        "Trained %d rounds in %.1fs (predicted %.1fs incl. %.1fs start-up); best round %d, "
        "validation %s %.5f; peak %.0f MiB per worker (predicted %.0f)",
        trained.iterations_run,
        run.total_time_s,
        allocation.predicted_wall_time_s,
        run.startup_s,
        trained.best_iteration,
        trained.validation_metric,
        run.final_metric if run.final_metric is not None else float("nan"),
        (run.peak_memory_bytes or 0) / 2**20,
        (allocation.predicted_peak_memory_bytes or float("nan")) / 2**20,
    )
    return attempt


@task(name="log-training")
def log_training_task(
    config: PipelineConfig,
    dataset: DatasetRef,
    attempt: TrainingAttempt,
    allocation: Allocation,
    parent_run_id: str | None,
) -> TrainingResult:
    """Log the training run, its allocation (predicted vs actual) and the model to MLflow."""
    client, experiment_id = experiment_for(config)
    tags = lineage_tags(config) | allocation_tags(allocation)
    result = log_training(
        client,
        experiment_id,
        dataset,
        attempt.trained,
        parent_run_id,
        tags,
        allocation_params(allocation),
        outcome_metrics(allocation, attempt.profile),
    )
    return result.model_copy(update={"allocation": allocation})
