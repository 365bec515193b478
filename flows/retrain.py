"""The retraining pipeline: preprocess -> train -> evaluate -> register, one MLflow parent run."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel

from flows.evaluate import evaluate_flow
from flows.preprocess import preprocess_flow
from flows.register import register_flow
from flows.train import train_flow
from infra.prefect_runtime import without_flow_heartbeats
from mlops.config import PipelineConfig
from tasks.tracking import close_pipeline_run_task, open_pipeline_run_task


class PipelineResult(BaseModel):
    """What a pipeline run produced, and where to look at it."""

    model_name: str
    model_version: str
    alias: str
    metrics: dict[str, float]
    primary_metric: str
    dataset_version: str
    dataset_uri: str
    pipeline_run_id: str
    training_run_id: str


@flow(name="retraining-pipeline", log_prints=True)
def retraining_pipeline_flow(config: PipelineConfig) -> PipelineResult:
    """Run every stage of the pipeline for one use case.

    Each stage is its own flow (a sub-flow run here) and nests its MLflow run under the
    pipeline's parent run. A failing stage fails the pipeline and its parent run.
    """
    parent = open_pipeline_run_task(config)
    try:
        with without_flow_heartbeats():
            dataset = preprocess_flow(config, parent)
            training = train_flow(config, dataset, parent)
            evaluation = evaluate_flow(config, dataset, training, parent)
            registered = register_flow(config, dataset, training, evaluation, parent)
    except BaseException as error:
        close_pipeline_run_task(config, parent, None, error=f"{type(error).__name__}: {error}")
        raise
    result = PipelineResult(
        model_name=registered.name,
        model_version=registered.version,
        alias=registered.alias,
        metrics=evaluation.metrics,
        primary_metric=evaluation.primary_metric,
        dataset_version=dataset.version,
        dataset_uri=dataset.uri,
        pipeline_run_id=parent,
        training_run_id=training.run_id,
    )
    summary = {f"test_{k}": v for k, v in evaluation.metrics.items()} | {
        "model.version": registered.version,
        "model.alias": registered.alias,
        "dataset.version": dataset.version,
    }
    close_pipeline_run_task(config, parent, summary)
    return result
