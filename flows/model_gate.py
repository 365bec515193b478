"""Model gate stage: candidate vs champion on the same held-out rows; pass or reject."""

from __future__ import annotations

from prefect import flow
from prefect.states import State

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.gates import DataGateResult
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.tasks.evaluation import EvaluationResult
from prefect_mlops.tasks.model_gate import (
    GateDecision,
    compare_with_champion,
    decide,
    find_champion,
    record_gate_ledger,
    rejected_state,
)


@flow(name="model-gate", log_prints=True, persist_result=True, result_serializer="json")
def model_gate_flow(
    config: PipelineConfig,
    dataset: DatasetRef,
    candidate: RegisteredVersion,
    data_gate: DataGateResult | None = None,
    parent_run_id: str | None = None,
    evaluation: EvaluationResult | None = None,
) -> GateDecision | State:
    """Judge a registered candidate against the champion.

    Pass: the decision says so, and the deploy stage makes the candidate ``champion``. Fail:
    the candidate keeps ``challenger`` with the reason in its tags, and this flow run ends in
    a state named "Rejected". The ledger of both gates is recorded either way.

    Args:
        config: The use case (its ``model_gate`` section sets the checks).
        dataset: The dataset the candidate was trained on; its test split is the holdout.
        candidate: The registered candidate version.
        data_gate: The data gate's result, for the ledger.
        parent_run_id: MLflow run to nest this stage's run under (the pipeline's).
        evaluation: The evaluate stage's result: the candidate's test scores it kept (and the
            metrics from them) are used rather than scoring the test split again.
    """
    champion = find_champion(config)
    comparison = compare_with_champion(config, dataset, candidate, champion, evaluation)
    ledger = record_gate_ledger(config, candidate, champion, data_gate, comparison, parent_run_id)
    decision = decide(ledger, comparison)
    return decision if ledger.passed else rejected_state(decision)
