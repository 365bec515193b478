"""Training stage: the model families' trainers on an allocated Dask cluster, measured and logged.

The training itself is the family's (:mod:`mlops.families`); this module builds the cluster the
allocator chose, measures the run for the allocator's history, and logs the run and its model
to MLflow.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.infra.allocator.history import RunProfile
from prefect_mlops.infra.allocator.profiling import (
    TrainingOutcomeError,
    TrainOnCluster,
    cluster_config,
    job_features,
    measure_training,
    profile_row,
)
from prefect_mlops.infra.allocator.report import allocation_params, allocation_tags, outcome_metrics
from prefect_mlops.mlops.config import (
    ClusterConfig,
    PipelineConfig,
    TaskType,
    ThresholdConfig,
    TrainingConfig,
)
from prefect_mlops.mlops.dataset import DatasetRef, read_sample
from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.families import ModelFamily, TrainedModel, family, with_threshold
from prefect_mlops.mlops.prediction import DEFAULT_THRESHOLD
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.mlops.thresholds import choose_threshold, metrics_at
from prefect_mlops.mlops.training_config import check_threshold_fits
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.registry import log_pipeline_model, logged_model_id
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags, log_split_inputs

if TYPE_CHECKING:
    from distributed import Client

    from prefect_mlops.tasks.tuning import TuningOutcome

logger = logging.getLogger(__name__)

DEFERRED_IMPORTS = (
    "prefect_mlops.infra.dask_cluster",
    "prefect_mlops.tasks.figures",
    "prefect_mlops.tasks.tuning",
)
"""Imported by the functions that train, draw and log, not by importing this module (the
evaluate and register stages read only its result type); the fork servers import them ahead."""

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


def check_threshold_fits_task(config: PipelineConfig, task: TaskType) -> None:
    """Refuse a ``training.threshold`` section when the task (inferred from the data) is not
    binary: checked before anything trains (a declared ``data.task`` is checked when the
    config is read).

    Raises:
        ConfigError: naming the key, the task and the config's file.
    """
    try:
        check_threshold_fits(config.training, task, config.origin)
    except ValueError as error:
        raise ConfigError(f"{error}. The task was inferred from the data's target.") from None


def decide_threshold(
    trained: TrainedModel, task: TaskType, config: ThresholdConfig | None
) -> TrainedModel:
    """A binary model with its decision threshold chosen on the validation split by the
    configured objective (best F1 without one); other tasks as they are.

    Whatever the family: the threshold goes into the predictor's facts, so it is written with
    the model's files and every way of loading the model labels rows with it.
    """
    if task != "binary":
        return trained
    choice = choose_threshold(trained.validation_targets, trained.validation_scores, config)
    predictor = with_threshold(trained.predictor, choice.threshold)
    return trained.model_copy(update={"predictor": predictor, "threshold": choice})


def threshold_record(
    trained: TrainedModel, config: ThresholdConfig | None
) -> tuple[dict[str, Any], dict[str, float]]:
    """The decision threshold's params and validation metrics for the train run (none when the
    model has no chosen threshold)."""
    choice = trained.threshold
    if choice is None:
        return {}, {}
    params: dict[str, Any] = {
        "decision_threshold": choice.threshold,
        "threshold.objective": choice.objective,
    }
    if choice.objective == "cost" and config is not None:
        params["threshold.false_positive_cost"] = config.false_positive_cost
        params["threshold.false_negative_cost"] = config.false_negative_cost
    if choice.objective == "precision_at_recall" and config is not None:
        params["threshold.min_recall"] = config.min_recall
    if choice.note:
        params["threshold.note"] = choice.note[:500]
    at_half = metrics_at(trained.validation_targets, trained.validation_scores, DEFAULT_THRESHOLD)
    metrics = {f"validation_{k}": v for k, v in choice.metrics.items()}
    metrics |= {f"validation_{k}_at_0.5": v for k, v in at_half.items() if k != "positive_rate"}
    return params, metrics


def log_training_run(
    client: MlflowClient,
    experiment_id: str,
    dataset: DatasetRef,
    trained: TrainedModel,
    parent_run_id: str | None,
    tags: dict[str, str],
    extra_params: dict[str, Any] | None = None,
    extra_metrics: dict[str, float] | None = None,
    validation_metrics: dict[str, float] | None = None,
) -> TrainingResult:
    """Log a training run: params, the per-round validation curve, plots, inputs and the model.

    The metrics are logged after the model: MLflow 3 copies the metrics a run already has
    to a model logged in it, and the validation curve's first round or the training time
    would then pass for the model's. The metrics that describe the model (its best
    validation score, ``validation_metrics``) are linked to it and to the validation split,
    so the model's page lists them; the others (the curve, time, memory, ``extra_metrics``)
    belong to the run alone.
    """
    from prefect_mlops.tasks.figures import (
        evaluation_figures,
        feature_importance_figure,
        learning_curve_figure,
        threshold_figure,
    )

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
        per_iteration = trained.wall_time_s / max(trained.iterations_run, 1)
        peak = max(trained.peak_worker_memory_bytes.values(), default=0)
        best_score = (
            trained.validation_curve[trained.best_iteration - 1]
            if trained.validation_curve
            else float("nan")
        )
        importance = trained.predictor.feature_importance()
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
        threshold = trained.threshold.threshold if trained.threshold else DEFAULT_THRESHOLD
        figures = evaluation_figures(
            dataset.task,
            trained.validation_targets,
            trained.validation_scores,
            dataset.classes,
            "validation",
            threshold,
        )
        if trained.threshold is not None:
            figures["validation_threshold_choice"] = threshold_figure(
                trained.validation_targets, trained.validation_scores, trained.threshold
            )
        tracking.log_figures(client, run_id, figures)
        splits = log_split_inputs(client, run_id, dataset, "train", "validation")
        model_uri = log_pipeline_model(run_id, trained.predictor, read_sample(dataset))
        tracking.log_metric_history(
            client, run_id, f"validation_{trained.validation_metric}", trained.validation_curve
        )
        tracking.log_metrics(
            client,
            run_id,
            {
                "training_time_s": trained.wall_time_s,
                "time_per_iteration_s": per_iteration,
                "iterations_run": trained.iterations_run,
                "peak_worker_memory_mb": peak / 2**20,
                **(extra_metrics or {}),
            },
        )
        tracking.log_metrics(
            client,
            run_id,
            {f"best_validation_{trained.validation_metric}": best_score}
            | (validation_metrics or {}),
            model_id=logged_model_id(model_uri),
            dataset=splits["validation"],
        )
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


class TrainingAttempt(BaseModel):
    """One try at training on an allocated cluster: the model if it worked, and its history row.

    With several families (``training.family`` a list), the model and ``profile`` are the
    family kept (the lowest validation loss) or the one that failed; ``others`` are the
    history rows of the families trained beside it.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    trained: TrainedModel | None
    profile: RunProfile
    error: str | None = None
    others: list[RunProfile] = Field(default_factory=list)

    @property
    def runs(self) -> list[RunProfile]:
        """Every family's history row, the kept (or failed) one first."""
        return [self.profile, *self.others]


def training_for_allocation(
    training: TrainingConfig, allocation: Allocation, model_family: ModelFamily
) -> TrainingConfig:
    """The training config with the allocated cluster (and the family's GPU settings for one)."""
    configured = model_family.for_gpu(training) if allocation.gpu else training
    return configured.model_copy(
        update={"cluster": cluster_config(allocation.shape, training.cluster)}
    )


def dask_trainer(
    model_family: ModelFamily, dataset: DatasetRef, work_uri: str
) -> TrainOnCluster[TrainedModel]:
    """The family's training on a dataset, as :func:`measure_training` runs it, with the
    workers' peak memory measured after it."""
    from prefect_mlops.infra.dask_cluster import worker_peak_memory

    def train(client: Client, training: TrainingConfig, workers: list[str] | None) -> TrainedModel:
        trained = model_family.train(client, dataset, training, work_uri, workers)
        peak = worker_peak_memory(client, workers)
        return trained.model_copy(update={"peak_worker_memory_bytes": peak})

    return train


def train_on_allocation(
    dataset: DatasetRef,
    training: TrainingConfig,
    allocation: Allocation,
    work_uri: str,
    family_name: str | None = None,
) -> TrainingAttempt:
    """Train one family (default: the config's first) on the allocated cluster and measure
    the run, whether it succeeds or fails."""
    model_family = family(family_name or training.families[0])
    job = job_features(dataset, training, model_family)
    settings = get_settings()
    scheduler = training.cluster.scheduler_address or settings.dask_scheduler_address
    kind = "scheduler" if scheduler else settings.resolved_dask_cluster
    planned = model_family.name == training.families[0]  # the allocation predicted its run
    common = {
        "use_case": dataset.name,
        "dataset_version": dataset.version,
        "backend": kind,
        "predicted": (allocation.predicted_wall_time_s, allocation.predicted_peak_memory_bytes)
        if planned
        else None,
    }
    configured = training_for_allocation(training, allocation, model_family)
    try:
        trained, startup, wall = measure_training(
            dask_trainer(model_family, dataset, work_uri),
            configured,
            allocation.shape,
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


def train_families(
    dataset: DatasetRef, training: TrainingConfig, allocation: Allocation, work_uri: str
) -> TrainingAttempt:
    """Train each of the config's families in turn on the allocated cluster; keep the one with
    the lowest validation loss (the same metric on the same validation rows).

    A family that fails fails the attempt (the cluster must train them all; after running out
    of memory the allocator re-plans): the families after it are not trained.
    """
    attempts: list[TrainingAttempt] = []
    for name in training.families:  # each in its own scratch folder
        attempt = train_on_allocation(dataset, training, allocation, f"{work_uri}/{name}", name)
        attempts.append(attempt)
        if attempt.trained is None:
            break
    kept = attempts[-1] if attempts[-1].trained is None else min(attempts, key=_validation_loss)
    others = [a.profile for a in attempts if a is not kept]
    return kept.model_copy(update={"others": others})


def _validation_loss(attempt: TrainingAttempt) -> float:
    loss = attempt.profile.final_metric
    return loss if loss is not None and math.isfinite(loss) else math.inf


def family_metrics(attempt: TrainingAttempt) -> dict[str, float]:
    """Each family's best validation loss, for a run that trained several
    (``family_<name>_best_validation_<metric>``); empty for one family."""
    if not attempt.others:
        return {}
    return {
        f"family_{run.family}_best_validation_{run.metric_name}": run.final_metric
        for run in attempt.runs
        if run.final_metric is not None
    }


def family_tags(attempt: TrainingAttempt) -> dict[str, str]:
    """The family of the logged model, and the families it was chosen from."""
    tags = {"mlops.family": attempt.profile.family or ""}
    if attempt.others:
        tags["mlops.families_compared"] = ",".join(run.family or "?" for run in attempt.runs)
    return tags


@task(name="train-model", timeout_seconds=6 * 3600, persist_result=False)
def train_model(
    dataset: DatasetRef, training: TrainingConfig, allocation: Allocation, work_uri: str
) -> TrainingAttempt:
    """Build the allocated Dask cluster, train each family, measure, and tear the cluster down."""
    logger = get_run_logger()
    logger.info(
        "Training %s on %s (%s); %d training rows",
        " and ".join(training.families),
        allocation.shape.label(),
        training.cluster.scheduler_address or "LocalCluster",
        dataset.row_counts["train"],
    )
    attempt = train_families(dataset, training, allocation, work_uri)
    for other in attempt.others:
        logger.info(
            "%s: validation %s %.5f in %.1fs",
            other.family,
            other.metric_name,
            other.final_metric if other.final_metric is not None else float("nan"),
            other.total_time_s,
        )
    run = attempt.profile
    if attempt.trained is None:
        logger.warning(
            "Training failed (%s) after %.1fs: %s", run.status, run.wall_time_s, attempt.error
        )
        return attempt
    trained = attempt.trained
    logger.info(
        "%s%s: trained %d rounds in %.1fs (predicted %.1fs incl. %.1fs start-up); best round %d, "
        "validation %s %.5f; peak %.0f MiB per worker (predicted %.0f)",
        run.family,
        " (kept: the lowest validation loss)" if attempt.others else "",
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
def log_training(
    config: PipelineConfig,
    dataset: DatasetRef,
    attempt: TrainingAttempt,
    allocation: Allocation,
    parent_run_id: str | None,
    tuning: TuningOutcome | None = None,
) -> TrainingResult:
    """Log the training run, its allocation (predicted vs actual) and the model to MLflow;
    after a search, its summary on the run and each trial as a child run of it."""
    from prefect_mlops.tasks.tuning import (
        log_trial_runs,
        tuning_metrics,
        tuning_params,
        tuning_tags,
    )

    client, experiment_id = experiment_for(config)
    tags = lineage_tags(config) | allocation_tags(allocation) | family_tags(attempt)
    trained = decide_threshold(attempt.trained, dataset.task, config.training.threshold)
    if trained.threshold is not None:
        get_run_logger().info("Decision threshold %s", trained.threshold.summary())
    threshold_params, threshold_metrics = threshold_record(trained, config.training.threshold)
    params = allocation_params(allocation) | threshold_params
    metrics = outcome_metrics(allocation, attempt.profile) | family_metrics(attempt)
    if tuning is not None:
        params, metrics = params | tuning_params(tuning), metrics | tuning_metrics(tuning)
        tags |= tuning_tags(tuning)
    result = log_training_run(
        client,
        experiment_id,
        dataset,
        trained,
        parent_run_id,
        tags,
        params,
        metrics,
        threshold_metrics,
    )
    if tuning is not None:
        log_trial_runs(client, experiment_id, result.run_id, tuning, lineage_tags(config))
    return result.model_copy(update={"allocation": allocation})
