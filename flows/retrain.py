"""The retraining pipeline: preprocess -> data gate -> train -> evaluate -> register -> model gate -> deploy."""

from __future__ import annotations

from prefect import flow
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from prefect_mlops.flows.data_gate import data_gate_flow
from prefect_mlops.flows.deploy import deploy_flow
from prefect_mlops.flows.evaluate import evaluate_flow
from prefect_mlops.flows.model_gate import model_gate_flow
from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.register import register_flow
from prefect_mlops.flows.train import train_flow
from prefect_mlops.infra.stage_runner import run_stage, run_stage_for_state, stage_output
from prefect_mlops.mlops.config import PipelineConfig, resolve_config
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.model_registry.tracking import tracking_uri_for
from prefect_mlops.tasks.allocation import recommend_allocation
from prefect_mlops.tasks.deploy import DeployResult
from prefect_mlops.tasks.evaluation import EvaluationResult
from prefect_mlops.tasks.model_gate import GateDecision
from prefect_mlops.tasks.tracking import close_pipeline_run, open_pipeline_run
from prefect_mlops.tasks.training import TrainingResult

TRAIN_GPU_DEPLOYMENT = "train-gpu"
"""The train flow's deployment on the GPU pool (prefect.production.yaml), for GPU allocations."""


class PipelineResult(BaseModel):
    """What a pipeline run produced, and where to look at it."""

    model_name: str
    model_version: str
    alias: str
    decision: str
    champion_version: str | None
    previous_version: str | None
    gate_reason: str
    failed_checks: list[str]
    check_counts: dict[str, int]
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    primary_metric: str
    dataset_version: str
    dataset_uri: str
    pipeline_run_id: str
    training_run_id: str
    experiment_name: str
    tracking_uri: str
    training_cluster: str = Field(
        default="", description="The allocated cluster, predicted and actual training time."
    )
    deployment: str = Field(
        default="", description="Where the new champion went live and what its smoke test measured."
    )


DEFAULT_CONFIG = "configs/fraud_detection.yaml"
"""The use case a run of the pipeline's deployment trains when no config is given."""


def gate_outcome(state: State) -> GateDecision:
    """The model gate's decision; a gate that errored (not one that rejected) raises here."""
    if state.name == "Rejected":
        return GateDecision.model_validate(state.result(raise_on_failure=False))
    return stage_output(state, "model-gate", GateDecision)


def deploy_outcome(state: State) -> DeployResult:
    """The deploy stage's result; a stage that errored (not one that rolled back) raises here."""
    if state.name == "RolledBack":
        return DeployResult.model_validate(state.result(raise_on_failure=False))
    return stage_output(state, "deploy", DeployResult)


def summarise_pipeline(
    config: PipelineConfig,
    dataset: DatasetRef,
    training: TrainingResult,
    evaluation: EvaluationResult,
    registered: RegisteredVersion,
    decision: GateDecision,
    deployed: DeployResult | None,
    pipeline_run_id: str,
) -> PipelineResult:
    """What the stages produced, in one record for the CLI, the UI and the next pipeline."""
    live = deployed is not None and deployed.verdict == "deployed"
    return PipelineResult(
        model_name=registered.name,
        model_version=registered.version,
        alias="champion" if live else registered.alias,
        decision="promoted" if live else deployed.verdict if deployed else decision.verdict,
        champion_version=deployed.champion_version if deployed else decision.champion_before,
        previous_version=deployed.previous_version if deployed else None,
        gate_reason=decision.reason,
        failed_checks=[f"{c.description}: {c.summary()}" for c in decision.ledger.failures],
        check_counts={
            v: sum(c.verdict == v for c in decision.ledger.checks) for v in ("pass", "fail", "skip")
        },
        metrics=evaluation.metrics,
        champion_metrics=decision.champion_metrics,
        primary_metric=decision.primary_metric,
        dataset_version=dataset.version,
        dataset_uri=dataset.uri,
        pipeline_run_id=pipeline_run_id,
        training_run_id=training.run_id,
        training_cluster=cluster_summary(training),
        deployment=deployed.summary() if deployed else "",
        experiment_name=config.experiment_name,
        tracking_uri=tracking_uri_for(config),
    )


def cluster_summary(training: TrainingResult) -> str:
    """E.g. ``1x2 @ 1 GiB, 12.3s (predicted 11.0s, confidence medium)``."""
    allocation = training.allocation
    if allocation is None:
        return ""
    return (
        f"{allocation.shape.label()}, trained in {training.wall_time_s:.1f}s "
        f"(predicted {allocation.predicted_wall_time_s:.1f}s with start-up, confidence "
        f"{allocation.confidence_label})"
    )


@flow(
    name="retraining-pipeline",
    log_prints=True,
    persist_result=True,
    result_serializer="json",
)
def retraining_pipeline_flow(
    config: PipelineConfig | str = DEFAULT_CONFIG,
) -> PipelineResult | State:
    """Run every stage of the pipeline for one use case.

    Each stage is its own flow run, a child of this one: a sub-flow in this process, or a run
    of the stage's own deployment on its own work pool (``MLOPS_STAGE_RUNNER=deployments``).
    Each nests its MLflow run under the pipeline's parent run. Bad data stops the run at the
    data gate, before training. A candidate the model gate rejects keeps ``challenger``, and
    this run ends in a state named "Rejected". One that passes is deployed: it becomes
    ``champion`` and goes live on the serving instances; if its smoke test fails it is rolled
    back, and this run ends in a state named "RolledBack".

    Args:
        config: The use case: a YAML path relative to the project (``configs/<name>.yaml``)
            or the whole config.
    """
    config = resolve_config(config)
    parent = open_pipeline_run(config)
    try:
        dataset = run_stage(preprocess_flow, config=config, parent_run_id=parent)
        checked = None
        if config.data_gate.enabled:
            checked = run_stage(
                data_gate_flow, config=config, dataset=dataset, parent_run_id=parent
            )
        allocation = recommend_allocation(config, dataset)
        training = run_stage(
            train_flow,
            deployment=TRAIN_GPU_DEPLOYMENT if allocation.gpu else None,
            config=config,
            dataset=dataset,
            parent_run_id=parent,
            allocation=allocation,
        )
        evaluation = run_stage(
            evaluate_flow, config=config, dataset=dataset, training=training, parent_run_id=parent
        )
        registered = run_stage(
            register_flow,
            config=config,
            dataset=dataset,
            training=training,
            evaluation=evaluation,
            parent_run_id=parent,
        )
        gate_state = run_stage_for_state(
            model_gate_flow,
            config=config,
            dataset=dataset,
            candidate=registered,
            data_gate=checked,
            parent_run_id=parent,
            evaluation=evaluation,
        )
        decision = gate_outcome(gate_state)
        deploy_state = None
        if decision.verdict == "passed":
            deploy_state = run_stage_for_state(
                deploy_flow,
                config=config,
                dataset=dataset,
                candidate=registered,
                expected_champion=decision.champion_before,
                parent_run_id=parent,
            )
        deployed = deploy_outcome(deploy_state) if deploy_state else None
    except BaseException as error:
        close_pipeline_run(config, parent, None, error=f"{type(error).__name__}: {error}")
        raise
    result = summarise_pipeline(
        config, dataset, training, evaluation, registered, decision, deployed, parent
    )
    summary = {f"test_{k}": v for k, v in evaluation.metrics.items()} | {
        "model.version": registered.version,
        "model.alias": result.alias,
        "gate.verdict": decision.ledger.verdict,
        "dataset.version": dataset.version,
    }
    if deployed:
        summary["deploy.verdict"] = deployed.verdict
    close_pipeline_run(config, parent, summary)
    if decision.verdict == "rejected":
        return Failed(name="Rejected", message=gate_state.message, data=result)
    if result.decision == "rolled-back":
        return Failed(name="RolledBack", message=deploy_state.message, data=result)
    return result
