"""Both gates inside the real pipeline: real GX, real MLflow registry, real Prefect flow runs."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentFlowRunId,
)

from prefect_mlops.flows.data_gate import data_gate_flow
from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.mlops.errors import DataValidationError, PromotionConflict
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.model_registry.promotion import promote_to_champion
from prefect_mlops.tasks.deploy import promotion_lock
from tests.integration.conftest import bundled_config, markdown_artifacts

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"


def registry() -> MlflowClient:
    uri = get_settings().resolved_tracking_uri
    return MlflowClient(uri, registry_uri=uri)


def aliases(name: str = MODEL) -> dict[str, str]:
    return {k: str(v) for k, v in registry().get_registered_model(name).aliases.items()}


def version_count(name: str = MODEL) -> int:
    return len(registry().search_model_versions(f"name = '{name}'"))


def stage_runs(pipeline_run_id: str) -> dict[str, object]:
    client = registry()
    experiment = client.get_run(pipeline_run_id).info.experiment_id
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{pipeline_run_id}'")
    return {r.data.tags["mlops.stage"]: r for r in children}


def child_flow_runs(parent_flow_run_id) -> dict[str, object]:
    """The stage flow runs of a pipeline flow run, by flow name."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_flow_run_id])
            )
        )
        return {client.read_flow(run.flow_id).name: run for run in runs}


# ---------------------------------------------------------------- one champion, shared


@pytest.fixture(scope="module")
def champion_home(fraud_file, tmp_path_factory):
    """A state folder whose registry holds one fraud-detector champion, trained on fraud_file."""
    home = tmp_path_factory.mktemp("champion-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        get_settings.cache_clear()
        result = retraining_pipeline_flow(bundled_config("fraud_detection", fraud_file))
        assert (result.model_version, result.alias, result.decision) == (
            "1",
            "champion",
            "promoted",
        )
    get_settings.cache_clear()
    return home


@pytest.fixture
def in_champion_home(champion_home, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(champion_home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{champion_home / 'mlflow.db'}")
    get_settings.cache_clear()
    yield champion_home
    get_settings.cache_clear()


# ---------------------------------------------------------------- data gate


def corrupt(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The source file with one kind of damage a real export can have."""
    rng = np.random.default_rng(11)
    frame = frame.copy()
    if kind == "renamed column":
        return frame.rename(columns={"customer_age": "age_years"})
    if kind == "wrong dtype":
        as_text = frame["card_age_days"].map(lambda v: f"{v:.0f} days", na_action="ignore")
        return frame.assign(card_age_days=as_text)
    if kind == "out-of-range values":
        frame.loc[rng.random(len(frame)) < 0.03, "amount"] = -250.0
        return frame
    if kind == "burst of nulls":
        frame.loc[rng.random(len(frame)) < 0.4, "customer_age"] = np.nan
        return frame
    if kind == "shifted distribution":
        return frame.assign(amount=frame["amount"] * 1.8)
    if kind == "flipped labels":
        flip = rng.random(len(frame)) < 0.1
        frame.loc[flip, "is_fraud"] = 1 - frame.loc[flip, "is_fraud"]
        return frame
    raise ValueError(kind)


CORRUPTIONS = {
    "renamed column": ["column set matches the reference", "missing ['customer_age']"],
    "wrong dtype": ["'card_age_days' is numeric", "found str"],
    "out-of-range values": ["'amount' within the reference range", "amount=-250.0"],
    "burst of nulls": ["'customer_age' null share", "allowed at most"],
    "shifted distribution": ["'amount' mean close to the reference", "'amount' median"],
    "flipped labels": ["share of class '1' in 'is_fraud' not too high"],
}


@pytest.mark.reliability
@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_bad_data_stops_the_pipeline_at_the_data_gate(
    kind, in_champion_home, fraud_file, tmp_path, figures
):
    source = tmp_path / f"{kind.replace(' ', '-')}.parquet"
    corrupt(pd.read_parquet(fraud_file), kind).to_parquet(source)
    config = bundled_config("fraud_detection", source)
    versions_before = version_count()

    state = retraining_pipeline_flow(config, return_state=True)

    assert state.is_failed()
    with pytest.raises(DataValidationError) as error:
        state.result()
    message = str(error.value)
    assert message.startswith(f"Data gate failed for '{source}'")
    assert "against the training data of champion version 1" in message
    for fragment in CORRUPTIONS[kind]:
        assert fragment in message, message
    # Nothing trained or registered, and the serving alias did not move.
    assert version_count() == versions_before
    assert aliases()["champion"] == "1"
    stages = child_flow_runs(state.state_details.flow_run_id)
    assert set(stages) == {"preprocess", "data-gate"}
    assert stages["data-gate"].state.is_failed()
    pipeline_run = registry().search_runs(
        [registry().get_experiment_by_name("fraud-detection").experiment_id],
        "attributes.status = 'FAILED' and tags.`mlops.error` LIKE 'DataValidationError%'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )[0]
    runs = stage_runs(pipeline_run.info.run_id)
    assert set(runs) == {"preprocess", "data-gate"}
    gate_run = runs["data-gate"]
    assert gate_run.info.status == "FAILED"
    artifacts = {a.path for a in registry().list_artifacts(gate_run.info.run_id)}
    assert {"data_docs", "data_gate_report.md", "expectation_suite.json"} <= artifacts
    report = markdown_artifacts(stages["data-gate"].id)["data-gate-fraud-detection"]
    assert "# Data gate FAILED" in report and "data_docs/index.html" in report
    figures.record(
        "pipeline",
        f"bad data at the data gate ({kind})",
        f"a source file with {kind} run through the whole pipeline",
        True,
        "the data gate failed naming the check; nothing trained or registered, champion kept, "
        "both stage runs closed",
        versions_added=version_count() - versions_before,
        stages_run=len(stages),
    )


def test_new_data_from_the_same_process_passes(in_champion_home, tmp_path):
    fresh = write_dataset("fraud", 30_000, tmp_path / "fresh.parquet", seed=99, chunk_rows=10_000)
    config = bundled_config("fraud_detection", fresh)
    result = data_gate_flow(config, preprocess_flow(config))
    assert result.passed, [c.summary() for c in result.failures]
    assert result.reference_origin == "the training data of champion version 1"
    assert len(result.checks) > 40
    assert Path(result.data_docs_uri).is_file()
    assert Path(result.suite_uri).is_file()  # stored beside the champion's dataset version
    assert f"/{result.reference_version}/expectations/" in result.suite_uri


# ---------------------------------------------------------------- model gate


def test_weaker_candidate_is_rejected_and_the_champion_stays(in_champion_home, fraud_file):
    weak = bundled_config(
        "fraud_detection", fraud_file, n_estimators=2, num_leaves=3, early_stopping_rounds=0
    )
    state = retraining_pipeline_flow(weak, return_state=True)

    assert state.is_failed() and state.name == "Rejected"
    result = state.result(raise_on_failure=False)
    assert result.decision == "rejected" and result.alias == "challenger"
    assert result.metrics["roc_auc"] < result.champion_metrics["roc_auc"]
    failed = {line.split(": fail")[0] for line in result.failed_checks}
    assert "test roc_auc ≥ 0.8" in failed  # the bundled floor
    assert "test roc_auc not worse than the champion's by more than 1.0%" in failed
    assert aliases()["champion"] == "1"
    assert aliases()["challenger"] == result.model_version
    version = registry().get_model_version(MODEL, result.model_version)
    assert version.tags["gate.verdict"] == "rejected"
    assert "roc_auc" in version.tags["gate.reason"]
    assert version.tags["gate.model.champion.roc_auc.no_regression"].startswith("fail")
    data_tags = [k for k in version.tags if k.startswith("gate.data.")]
    assert len(data_tags) > 40 and all(version.tags[k].startswith("pass") for k in data_tags)
    run = registry().get_run(result.training_run_id)
    assert run.data.tags["gate.verdict"] == "rejected"
    assert run.data.metrics["gate.model.champion.roc_auc.no_regression"] == pytest.approx(
        result.metrics["roc_auc"]
    )
    stages = child_flow_runs(state.state_details.flow_run_id)
    assert stages["model-gate"].state.name == "Rejected"
    assert stages["model-gate"].state.type.value == "FAILED"  # a verdict, not a crash
    ledger = markdown_artifacts(stages["model-gate"].id)["gate-ledger-fraud-detector"]
    assert "**Decision: REJECTED**" in ledger and "| data |" in ledger and "| model |" in ledger


def test_better_candidate_is_promoted_and_the_old_champion_becomes_previous(fraud_file):
    weak = bundled_config(
        "fraud_detection", fraud_file, n_estimators=2, num_leaves=3, early_stopping_rounds=0
    )
    floors = weak.model_gate.model_copy(update={"metric_floors": {"roc_auc": 0.6}})
    weak = weak.model_copy(update={"model_gate": floors})  # the bundled 0.8 floor would stop it
    first = retraining_pipeline_flow(weak)
    assert (first.model_version, first.decision) == ("1", "promoted")
    assert first.failed_checks == []

    strong = retraining_pipeline_flow(bundled_config("fraud_detection", fraud_file))

    assert (strong.model_version, strong.decision, strong.alias) == ("2", "promoted", "champion")
    assert strong.metrics["roc_auc"] > strong.champion_metrics["roc_auc"]
    assert aliases() == {"champion": "2", "previous": "1"}  # challenger moved on to champion
    version = registry().get_model_version(MODEL, "2")
    assert version.tags["gate.verdict"] == "passed"
    assert version.tags["gate.champion_before"] == "1"
    assert "mlops.promoted_at" in version.tags


# ---------------------------------------------------------------- racing promotions


def test_concurrent_promotions_have_exactly_one_winner(in_champion_home):
    client = registry()
    source = client.get_model_version_download_uri(MODEL, "1")
    name = "race-model"
    client.create_registered_model(name)
    for _ in range(6):
        client.create_model_version(name, source)
    client.set_registered_model_alias(name, "champion", "1")
    start = threading.Barrier(5)
    outcomes: dict[str, object] = {}

    def promote(version: str) -> None:
        own = registry()
        start.wait()
        try:
            outcomes[version] = promote_to_champion(own, name, version, "1", promotion_lock(name))
        except PromotionConflict as conflict:
            outcomes[version] = conflict

    threads = [threading.Thread(target=promote, args=(str(v),)) for v in range(2, 7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)

    winners = [v for v, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert len(outcomes) == 5 and len(winners) == 1
    (winner,) = winners
    assert aliases(name) == {"champion": winner, "previous": "1"}
    for version, outcome in outcomes.items():
        if version != winner:
            assert str(outcome).startswith(f"Not promoting {name} version {version}")
            assert f"the champion is now version {winner}, not version 1" in str(outcome)
