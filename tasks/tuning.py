"""Tuning in the train stage: a hyperparameter search on the allocated cluster, its trials kept.

Before the candidate trains, :func:`tune_on_allocation` searches ``training.tuning.space``
(:mod:`mlops.tuning`): warm-started from the trial store (the best configurations of the most
similar past datasets), its trials run on the allocated cluster side by side or one at a time
as :mod:`infra.allocator.trials` plans, each recorded in the trial store as it ends. The best
trial's config then trains the candidate through the normal train stage, and
:func:`log_trial_runs` logs every trial as an MLflow child run of the train run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import get_run_logger, task
from pydantic import BaseModel

from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.infra.allocator.planner import objective_for, recorded_runs
from prefect_mlops.infra.allocator.profiling import cluster_config, host_cpus, job_features
from prefect_mlops.infra.allocator.trials import TrialPlan, plan_trials
from prefect_mlops.infra.allocator.tuning_history import open_trial_store
from prefect_mlops.infra.dask_cluster import dask_client, select_workers
from prefect_mlops.infra.trial_runner import current_workers, run_on_whole_cluster, run_per_worker
from prefect_mlops.mlops.config import ClusterConfig, TrainingConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.families import ModelFamily, family
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.mlops.storage import store_options
from prefect_mlops.mlops.tuning import (
    PastTrial,
    Search,
    SearchResult,
    TrialRecord,
    WarmStart,
    warm_start_configurations,
)
from prefect_mlops.mlops.tuning.space import configured_params
from prefect_mlops.mlops.tuning.trial import loss_name
from prefect_mlops.model_registry import tracking

logger = logging.getLogger(__name__)


class TuningOutcome(BaseModel):
    """A finished search as the train stage hands it on: the trials, the plan, the warm start."""

    result: SearchResult
    plan: TrialPlan
    warm_start: list[WarmStart]
    loss_name: str

    @property
    def training(self) -> TrainingConfig:
        """The config the candidate trains with: the best trial's."""
        return self.result.training


def warm_starts(
    dataset: DatasetRef, training: TrainingConfig, family_name: str, past: list[PastTrial]
) -> list[WarmStart]:
    """The configurations the search begins with (none when ``warm_start`` is off)."""
    tuning = training.tuning
    if not tuning.warm_start or tuning.warm_start_datasets == 0:
        return []
    return warm_start_configurations(
        dataset.meta_features,
        family_name,
        past,
        tuning.warm_start_datasets,
        tuning.space,
        configured_params(training),
    )


def earlier_searches(
    dataset: DatasetRef, training: TrainingConfig, past: list[PastTrial]
) -> dict[str, Any]:
    """What earlier searches of this very dataset version lend a new one: their judged
    configurations, and a seed of its own (``tuning.seed`` + the searches before it)."""
    same = [t for t in past if t.dataset_key == (dataset.name, dataset.version)]
    known = [(t.params, t.validation_loss) for t in same if t.status == "success"]
    return {"known": known, "seed": training.tuning.seed + len({t.search_id for t in same})}


def past_trial(
    record: TrialRecord, search_id: str, dataset: DatasetRef, family_name: str
) -> PastTrial:
    """A trial as the trial store keeps it."""
    return PastTrial(
        search_id=search_id,
        number=record.number,
        origin=record.origin[:128],
        use_case=dataset.name,
        dataset_version=dataset.version,
        family=family_name,
        meta=dataset.meta_features,
        params=record.params,
        status=record.status,
        validation_loss=record.validation_loss,
        loss_name=loss_name(dataset.task),
        best_iteration=record.best_iteration,
        wall_time_s=record.wall_time_s,
        cores=record.threads,
        error=record.error,
    )


def for_allocation(
    allocation: Allocation, model_family: ModelFamily
) -> Callable[[TrainingConfig], TrainingConfig]:
    """A trial's config made ready for the allocated cluster (its shape, the family's GPU)."""

    def ready(training: TrainingConfig) -> TrainingConfig:
        configured = model_family.for_gpu(training) if allocation.gpu else training
        return configured.model_copy(
            update={"cluster": cluster_config(allocation.shape, training.cluster)}
        )

    return ready


class SearchSite(BaseModel):
    """Where a search runs: the cluster to build (or take workers from) and how trials use it."""

    allocation: Allocation
    plan: TrialPlan
    cluster: ClusterConfig
    scheduler: str | None
    kind: str
    work_uri: str


def tune_on_allocation(
    dataset: DatasetRef,
    training: TrainingConfig,
    allocation: Allocation,
    work_uri: str,
    log: logging.Logger | logging.LoggerAdapter | None = None,
) -> TuningOutcome:
    """Search the config's space on the allocated cluster; every trial kept in the trial store.

    Args:
        dataset: The dataset version.
        training: The use case's training config (its ``tuning`` section is the search's).
        allocation: The cluster the allocator chose for the training run.
        work_uri: Scratch space for trials trained on the whole cluster.
        log: Where each trial's line goes as it ends (default: this module's logger).

    Returns:
        The trials, the best and its config, the plan and the warm start.
    """
    settings = get_settings()
    family_name = training.families[0]
    scheduler = training.cluster.scheduler_address or settings.dask_scheduler_address
    kind = "scheduler" if scheduler else settings.resolved_dask_cluster
    plan = plan_trials(
        job_features(dataset, training, family(family_name)),
        allocation,
        training.tuning,
        recorded_runs(settings),
        objective_for(training.allocator),
        host_cpus() if kind == "local" else None,
    )
    site = SearchSite(
        allocation=allocation,
        plan=plan,
        cluster=cluster_config(allocation.shape, training.cluster),
        scheduler=scheduler,
        kind=kind,
        work_uri=work_uri,
    )
    store = open_trial_store(settings)
    try:
        past = store.trials(family=family_name, task=dataset.task)
        starts = warm_starts(dataset, training, family_name, past)
        search = Search(training, starts, **earlier_searches(dataset, training, past))

        def keep(record: TrialRecord) -> None:
            (log or logger).log(
                logging.INFO if record.status == "success" else logging.WARNING, trial_line(record)
            )
            try:
                store.record(past_trial(record, search.search_id, dataset, family_name))
            except Exception as error:  # the search's result stands; only its memory is lost
                logger.warning("Trial %d not kept in the trial store: %s", record.number, error)

        result = run_search(search, dataset, family_name, site, keep)
    finally:
        store.close()
    return TuningOutcome(
        result=result, plan=plan, warm_start=starts, loss_name=loss_name(dataset.task)
    )


def run_search(
    search: Search,
    dataset: DatasetRef,
    family_name: str,
    site: SearchSite,
    keep: Callable[[TrialRecord], None],
) -> SearchResult:
    """Build the search's cluster and run its trials there as the plan says."""
    model_family = family(family_name)
    with dask_client(site.cluster, site.scheduler, site.kind) as client:
        if site.scheduler:
            workers = select_workers(client, site.allocation.workers)
        else:
            workers = current_workers(client)
        if site.plan.mode == "per-worker":
            options = store_options(dataset.split_uris["train"])
            return run_per_worker(
                client,
                search,
                workers,
                family_name,
                dataset,
                site.plan.threads_per_trial,
                options,
                keep,
            )
        return run_on_whole_cluster(
            client,
            search,
            workers if site.scheduler else None,
            model_family,
            dataset,
            for_allocation(site.allocation, model_family),
            site.work_uri,
            keep,
        )


def trial_line(record: TrialRecord) -> str:
    """One trial in words: its origin, parameters and loss (or how it failed)."""
    shown = ", ".join(f"{k}={_short(v)}" for k, v in record.params.items())
    head = f"Trial {record.number} ({record.origin}): {shown} -> "
    if record.status == "success":
        return head + f"{record.validation_loss:.5f} in {record.wall_time_s:.1f}s"
    return head + f"{record.status}: {record.error}"


def _short(value: float | int) -> str:
    return str(value) if isinstance(value, int) else f"{value:.4g}"


@task(name="tune-hyperparameters", persist_result=False)
def tune_hyperparameters(
    dataset: DatasetRef, training: TrainingConfig, allocation: Allocation, work_uri: str
) -> TuningOutcome:
    """Search hyperparameters on the allocated cluster before the candidate trains."""
    run_logger = get_run_logger()
    outcome = tune_on_allocation(dataset, training, allocation, work_uri, run_logger)
    run_logger.info("Tuning: %s", outcome.plan.reason)
    for line in summary_lines(outcome):
        run_logger.info("  %s", line)
    return outcome


def summary_lines(outcome: TuningOutcome) -> list[str]:
    """The search in a few lines: warm start, trials, the best and its parameters."""
    result = outcome.result
    origins = ", ".join(start.origin.removeprefix("warm start: ") for start in outcome.warm_start)
    lines = [
        f"warm start from {len(outcome.warm_start)} past dataset(s)"
        + (f": {origins}" if origins else " (none in the trial store yet)"),
        f"{len(result.trials)} trial(s), {result.failed} failed, stopped by "
        f"{'the core-second budget' if result.stopped == 'budget' else 'the trial count'}, "
        f"{result.core_seconds:.0f} core-s",
    ]
    if result.best is None:
        lines.append("no trial trained: the candidate trains with the configured parameters")
    else:
        best = result.best
        shown = ", ".join(f"{k}={_short(v)}" for k, v in best.params.items())
        lines.append(
            f"best: trial {best.number} ({best.origin}), validation {outcome.loss_name} "
            f"{best.validation_loss:.5f}: {shown}"
        )
    return lines


# ---------------------------------------------------------------- MLflow


def tuning_params(outcome: TuningOutcome) -> dict[str, str | int | float]:
    """MLflow params of the train run: the search and the parameters it chose."""
    result = outcome.result
    best = result.best
    return {
        "tuning.trials": len(result.trials),
        "tuning.failed_trials": result.failed,
        "tuning.warm_started_trials": result.warm_started,
        "tuning.best_trial": best.number if best else "none",
        "tuning.stopped_by": result.stopped,
        "tuning.mode": outcome.plan.mode,
        "tuning.trials_at_once": outcome.plan.slots,
        **{f"tuning.chosen.{k}": v for k, v in (best.params if best else {}).items()},
    }


def tuning_metrics(outcome: TuningOutcome) -> dict[str, float]:
    """MLflow metrics of the train run: the best trial's loss and what the search cost."""
    result = outcome.result
    metrics = {"tuning.core_seconds": result.core_seconds}
    if result.best is not None:
        metrics[f"tuning.best_validation_{outcome.loss_name}"] = result.best.validation_loss
    return metrics


def tuning_tags(outcome: TuningOutcome) -> dict[str, str]:
    """MLflow tags of the train run: the plan's reason and the warm start, in words."""
    return {
        "tuning.plan": outcome.plan.reason[:5000],
        "tuning.summary": "\n".join(summary_lines(outcome))[:5000],
    }


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def log_trial_runs(
    client: MlflowClient,
    experiment_id: str,
    train_run_id: str,
    outcome: TuningOutcome,
    tags: Mapping[str, str],
) -> list[str]:
    """Log every trial as a child run of the train run, with its real start and end times.

    Returns:
        The trials' run ids, in trial order.
    """
    run_ids = []
    for trial in outcome.result.trials:
        run = client.create_run(
            experiment_id,
            start_time=_ms(trial.started_at),
            run_name=f"trial-{trial.number}",
            tags={
                **tags,
                "mlflow.parentRunId": train_run_id,
                "mlops.stage": "tuning-trial",
                "mlops.trial.origin": trial.origin,
                "mlops.trial.status": trial.status,
                "mlops.trial.where": trial.where or "",
            },
        )
        run_id = run.info.run_id
        tracking.log_params(
            client,
            run_id,
            {**trial.params, "trial.number": trial.number, "trial.threads": trial.threads},
        )
        metrics = {"wall_time_s": trial.wall_time_s, "core_seconds": trial.core_seconds}
        if trial.validation_loss is not None:
            metrics[f"validation_{outcome.loss_name}"] = trial.validation_loss
            metrics["best_iteration"] = trial.best_iteration or 0
        tracking.log_metrics(client, run_id, metrics)
        if trial.error:
            client.set_tag(run_id, "mlops.error", trial.error[:5000])
        status = "FINISHED" if trial.status == "success" else "FAILED"
        client.set_terminated(run_id, status=status, end_time=_ms(trial.ended_at))
        run_ids.append(run_id)
    return run_ids
