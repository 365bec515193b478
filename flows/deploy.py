"""Deploy stage: the gated candidate becomes champion, goes live on the serving instances, or is rolled back."""

from __future__ import annotations

from prefect import flow
from prefect.states import Failed, State

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.tasks.deploy import (
    DeployResult,
    go_live,
    promote_to_champion,
    record_deploy,
    roll_back,
)


@flow(name="deploy", log_prints=True, persist_result=True, result_serializer="json")
def deploy_flow(
    config: PipelineConfig,
    dataset: DatasetRef,
    candidate: RegisteredVersion,
    expected_champion: str | None = None,
    parent_run_id: str | None = None,
) -> DeployResult | State:
    """Make a candidate that passed the model gate ``champion`` and put it live, checked.

    Moves ``champion`` (the former champion becomes ``previous``), tells every serving
    instance in ``MLOPS_SERVING_URLS`` to reload, and smoke-tests each on held-out rows:
    predictions equal to the registry model's and a p95 latency within ``deploy`` budget.
    On any failure ``champion`` goes back to the former champion, the instances reload onto
    it, and this flow run ends in a state named "RolledBack".

    Args:
        config: The use case (its ``deploy`` section sets the smoke test).
        dataset: The candidate's dataset; its test split holds the smoke-test rows.
        candidate: The registered version to deploy.
        expected_champion: The champion the model gate compared against; the promotion is
            refused if another version took ``champion`` since.
        parent_run_id: MLflow run to nest this stage's run under (the pipeline's).
    """
    promotion = promote_to_champion(config, candidate, expected_champion)
    outcome = go_live(config, dataset, candidate)
    restored = None if outcome.passed else roll_back(config, promotion, outcome.reason)
    result = record_deploy(config, candidate, promotion, outcome, restored, parent_run_id)
    if result.verdict == "rolled-back":
        return rolled_back_state(result)
    return result


def rolled_back_state(result: DeployResult) -> State:
    """The state the deploy stage (and the pipeline) ends in when the candidate is rolled back."""
    if result.champion_version == result.version:  # deployed again while already champion
        what = "failed its deploy; it was champion before, so the aliases stay"
    else:
        champion = f"version {result.champion_version}" if result.champion_version else "no version"
        what = f"was rolled back ({champion} is champion again)"
    return Failed(
        name="RolledBack",
        message=f"{result.model_name} version {result.version} {what}: {result.reason}",
        data=result,
    )
