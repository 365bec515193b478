"""The model gate: a registered candidate judged against the champion; pass or rejection.

:func:`compare_with_champion` runs the checks (:mod:`tasks.model_gate_checks`, where a new check
goes); :func:`record_gate_ledger` writes the ledger of both gates to the candidate's run and
version (:mod:`model_registry.ledger`), a ``model-gate`` MLflow run and a Prefect artifact;
:func:`decide` is the decision. A candidate that passes is promoted by the deploy stage
(:mod:`tasks.deploy`), against the champion the gate compared it with.
"""

from __future__ import annotations

from typing import Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed, State
from pydantic import BaseModel

from prefect_mlops.mlops.config import PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef
from prefect_mlops.mlops.gates import (
    DataGateResult,
    GateCheck,
    GateLedger,
    artifact_key,
    ledger_markdown,
)
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.ledger import record_ledger
from prefect_mlops.model_registry.promotion import ChampionRef, current_champion
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.tasks.evaluation import EvaluationResult
from prefect_mlops.tasks.model_gate_checks import Comparison, run_model_checks
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags, model_store


class GateDecision(BaseModel):
    """What the model gate decided, against which champion."""

    model_name: str
    candidate_version: str
    verdict: Literal["passed", "rejected"]
    champion_before: str | None
    reason: str
    primary_metric: str
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None = None
    ledger: GateLedger


def build_ledger(
    candidate: RegisteredVersion,
    champion: ChampionRef | None,
    data_gate: DataGateResult | None,
    comparison: Comparison,
) -> GateLedger:
    """Both gates' checks for one candidate, data gate first; a gate that did not run says so."""
    skipped = []
    if data_gate is None:
        skipped.append(
            GateCheck(
                gate="data",
                name="data_gate",
                description="data gate",
                verdict="skip",
                detail="not run for this candidate (data_gate.enabled is false, or the stage ran alone)",
            )
        )
    if not comparison.checks:
        skipped.append(
            GateCheck(
                gate="model",
                name="model_gate",
                description="model gate",
                verdict="skip",
                detail="no model checks apply (model_gate.enabled is false)",
            )
        )
    return GateLedger(
        model_name=candidate.name,
        candidate_version=candidate.version,
        candidate_run_id=candidate.run_id,
        champion_version=champion.version if champion else None,
        primary_metric=comparison.primary_metric,
        checks=[*(data_gate.checks if data_gate else []), *comparison.checks, *skipped],
        candidate_metrics=comparison.candidate_metrics,
        champion_metrics=comparison.champion_metrics,
    )


def rejected_state(decision: GateDecision) -> State:
    """The state a gate (and the pipeline) ends in when the candidate is rejected."""
    return Failed(
        name="Rejected",
        message=f"{decision.model_name} version {decision.candidate_version} rejected: "
        f"{decision.reason}",
        data=decision,
    )


def decide(ledger: GateLedger, comparison: Comparison) -> GateDecision:
    """The gate's decision from its ledger."""
    return GateDecision(
        model_name=ledger.model_name,
        candidate_version=ledger.candidate_version,
        verdict="passed" if ledger.passed else "rejected",
        champion_before=ledger.champion_version,
        reason=ledger.reason(),
        primary_metric=comparison.primary_metric,
        candidate_metrics=comparison.candidate_metrics,
        champion_metrics=comparison.champion_metrics,
        ledger=ledger,
    )


# ---------------------------------------------------------------- Prefect tasks


@task(name="find-champion", retries=2, retry_delay_seconds=[2, 10])
def find_champion(config: PipelineConfig) -> ChampionRef | None:
    """The current champion of the config's model, or None."""
    client, _ = experiment_for(config)
    return current_champion(client, config.model.name)


@task(name="compare-with-champion")
def compare_with_champion(
    config: PipelineConfig,
    dataset: DatasetRef,
    candidate: RegisteredVersion,
    champion: ChampionRef | None,
    evaluation: EvaluationResult | None = None,
) -> Comparison:
    """Score candidate and champion on the test split (reading the scores evaluation kept)
    and run the model checks."""
    return run_model_checks(
        dataset, candidate.model_uri, champion, config.model_gate, model_store(config), evaluation
    )


@task(name="record-gate-ledger")
def record_gate_ledger(
    config: PipelineConfig,
    candidate: RegisteredVersion,
    champion: ChampionRef | None,
    data_gate: DataGateResult | None,
    comparison: Comparison,
    parent_run_id: str | None,
) -> GateLedger:
    """Write the ledger to the candidate's run and version, a model-gate run and a Prefect artifact."""
    ledger = build_ledger(candidate, champion, data_gate, comparison)
    client, experiment_id = experiment_for(config)
    record_ledger(client, ledger)
    with tracking.stage_run(
        client, experiment_id, "model-gate", parent_run_id, lineage_tags(config)
    ) as run:
        run_id = run.run_id
        tracking.log_params(
            client,
            run_id,
            {
                "model.name": candidate.name,
                "candidate.version": candidate.version,
                "champion.version": champion.version if champion else "none",
                "primary_metric": comparison.primary_metric,
            },
        )
        metrics = {f"candidate_{k}": v for k, v in comparison.candidate_metrics.items()}
        metrics |= {f"champion_{k}": v for k, v in (comparison.champion_metrics or {}).items()}
        tracking.log_metrics(client, run_id, metrics)
        tracking.set_tags(client, run_id, {"gate.verdict": ledger.verdict})
        client.log_text(run_id, ledger_markdown(ledger), "gate_ledger.md")
    create_markdown_artifact(
        markdown=ledger_markdown(ledger),
        key=artifact_key("gate-ledger", candidate.name),
        description=f"Gate ledger of {candidate.name} version {candidate.version}: {ledger.verdict}",
    )
    return ledger
