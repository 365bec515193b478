"""The retraining pipeline: preprocess -> data gate -> train -> evaluate -> register -> model gate."""

from __future__ import annotations

from prefect import flow
from prefect.states import Failed, State
from pydantic import BaseModel

from flows.data_gate import data_gate_flow
from flows.evaluate import evaluate_flow
from flows.model_gate import model_gate_flow
from flows.preprocess import preprocess_flow
from flows.register import register_flow
from flows.train import train_flow
from infra.prefect_runtime import without_flow_heartbeats
from mlops.config import PipelineConfig
from tasks.promotion import GateDecision
from tasks.tracking import close_pipeline_run_task, open_pipeline_run_task


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


def gate_outcome(state: State) -> GateDecision:
    """The model gate's decision; a gate that errored (not one that rejected) re-raises here."""
    if state.is_failed() and state.name != "Rejected":
        state.result()  # raises the stage's exception
    return state.result(raise_on_failure=False)


@flow(name="retraining-pipeline", log_prints=True)
def retraining_pipeline_flow(config: PipelineConfig) -> PipelineResult | State:
    """Run every stage of the pipeline for one use case.

    Each stage is its own flow (a sub-flow run here) and nests its MLflow run under the
    pipeline's parent run. Bad data stops the run at the data gate, before training. A candidate
    the model gate rejects keeps ``challenger``, and this run ends in a state named "Rejected".
    """
    parent = open_pipeline_run_task(config)
    try:
        with without_flow_heartbeats():
            dataset = preprocess_flow(config, parent)
            checked = data_gate_flow(config, dataset, parent) if config.data_gate.enabled else None
            training = train_flow(config, dataset, parent)
            evaluation = evaluate_flow(config, dataset, training, parent)
            registered = register_flow(config, dataset, training, evaluation, parent)
            gate_state = model_gate_flow(
                config, dataset, registered, checked, parent, return_state=True
            )
            decision = gate_outcome(gate_state)
    except BaseException as error:
        close_pipeline_run_task(config, parent, None, error=f"{type(error).__name__}: {error}")
        raise
    result = PipelineResult(
        model_name=registered.name,
        model_version=registered.version,
        alias="champion" if decision.verdict == "promoted" else registered.alias,
        decision=decision.verdict,
        champion_version=decision.champion_version,
        previous_version=decision.previous_version,
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
        pipeline_run_id=parent,
        training_run_id=training.run_id,
    )
    summary = {f"test_{k}": v for k, v in evaluation.metrics.items()} | {
        "model.version": registered.version,
        "model.alias": result.alias,
        "gate.verdict": decision.ledger.verdict,
        "dataset.version": dataset.version,
    }
    close_pipeline_run_task(config, parent, summary)
    if decision.verdict == "rejected":
        return Failed(name="Rejected", message=gate_state.message, data=result)
    return result
