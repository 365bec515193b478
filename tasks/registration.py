"""Registration: a checked model version with lineage tags in the MLflow registry."""

from __future__ import annotations

import math
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import task

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.registry import RegisteredVersion, register_model_version
from prefect_mlops.tasks.evaluation import EvaluationResult
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags
from prefect_mlops.tasks.training import TrainingResult


class RegistrationRefused(RuntimeError):
    """The candidate is not fit to enter the registry at all (e.g. NaN metrics)."""


def check_registrable(evaluation: EvaluationResult) -> None:
    """Refuse a candidate whose metrics are missing or not finite.

    Raises:
        RegistrationRefused: naming the offending metrics.
    """
    bad = {k: v for k, v in evaluation.metrics.items() if not math.isfinite(v)}
    if not evaluation.metrics or bad:
        raise RegistrationRefused(
            f"Refusing to register: test metrics are missing or not finite ({bad or 'none computed'})."
        )


def version_tags(
    config: PipelineConfig,
    dataset: DatasetRef,
    training: TrainingResult,
    evaluation: EvaluationResult,
    pipeline_run_id: str | None,
) -> dict[str, str]:
    """Lineage tags of a model version: data, code, flow run and headline metrics."""
    tags = lineage_tags(config) | {
        "data.version": dataset.version,
        "data.uri": dataset.uri,
        "data.source": dataset.source_uri,
        "mlflow.training_run_id": training.run_id,
        "mlops.pipeline_run_id": pipeline_run_id or "none",
        "task": dataset.task,
    }
    tags |= {f"test_{k}": f"{v:.6g}" for k, v in evaluation.metrics.items()}
    return tags


def register_candidate(
    client: MlflowClient,
    experiment_id: str,
    config: PipelineConfig,
    dataset: DatasetRef,
    training: TrainingResult,
    evaluation: EvaluationResult,
    parent_run_id: str | None,
) -> RegisteredVersion:
    """Register the trained model under ``config.model.name`` and record it in a ``register`` run."""
    check_registrable(evaluation)
    tags = version_tags(config, dataset, training, evaluation, parent_run_id)
    description = config.description or f"{dataset.task} model for {config.name}"
    registered = register_model_version(
        client, config.model.name, training.model_uri, training.run_id, tags, description
    )
    with tracking.stage_run(
        client, experiment_id, "register", parent_run_id, lineage_tags(config)
    ) as run:
        run_id = run.run_id
        tracking.log_params(
            client,
            run_id,
            {
                "model.name": registered.name,
                "model.version": registered.version,
                "model.alias": registered.alias,
                "model.uri": registered.model_uri,
            },
        )
    return registered


def _not_refused(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a registration that failed, not one refused for its metrics (it would be again)."""
    try:
        state.result()
    except RegistrationRefused:
        return False
    except Exception:
        return True
    return True


@task(
    name="register-model",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_not_refused,
)
def register_model(
    config: PipelineConfig,
    dataset: DatasetRef,
    training: TrainingResult,
    evaluation: EvaluationResult,
    parent_run_id: str | None,
) -> RegisteredVersion:
    """Register the candidate model version with its alias (a retry finds the version a
    failed try registered, and does not register it again)."""
    client, experiment_id = experiment_for(config)
    return register_candidate(
        client, experiment_id, config, dataset, training, evaluation, parent_run_id
    )
