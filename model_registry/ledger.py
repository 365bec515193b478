"""Writing the gate ledger where people look: tags and metrics on the candidate's MLflow run
and model version, plus the full ledger as JSON and markdown artifacts on the run."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.gates import GateLedger, ledger_markdown
from prefect_mlops.model_registry import tracking

_TAG_VALUE_LIMIT = 5000  # model version tags hold at most 5000 characters


def ledger_tags(ledger: GateLedger) -> dict[str, str]:
    """Summary tags plus one ``gate.<gate>.<check>`` tag per check ("fail | value … | allowed …")."""
    tags = {
        "gate.verdict": ledger.verdict,
        "gate.reason": ledger.reason(),
        "gate.champion_before": ledger.champion_version or "none",
        "gate.primary_metric": ledger.primary_metric,
        "gate.checks_failed": str(len(ledger.failures)),
        "gate.checks_total": str(len(ledger.checks)),
    }
    threshold = ledger.candidate_metrics.get("decision_threshold")
    if threshold is not None:
        tags["gate.decision_threshold"] = f"{threshold:.6g}"
    tags |= {check.tag_key: check.summary() for check in ledger.checks}
    return {key: value[:_TAG_VALUE_LIMIT] for key, value in tags.items()}


def record_ledger(client: MlflowClient, ledger: GateLedger) -> None:
    """Tag the candidate's run and model version with every check; log the ledger documents."""
    tags = ledger_tags(ledger)
    run_id = ledger.candidate_run_id
    tracking.set_tags(client, run_id, tags)
    numbers = {c.tag_key: float(c.value) for c in ledger.checks if isinstance(c.value, int | float)}
    tracking.log_metrics(client, run_id, numbers)
    for key, value in tags.items():
        client.set_model_version_tag(ledger.model_name, ledger.candidate_version, key, value)
    tracking.log_json(client, run_id, ledger.model_dump(mode="json"), "gate_ledger.json")
    client.log_text(run_id, ledger_markdown(ledger), "gate_ledger.md")
