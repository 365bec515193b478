"""The deploy stage against a real `mlops serve`: reload, smoke test, and rollback on failure."""

from __future__ import annotations

import os
import threading

import httpx
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.flows.deploy import deploy_flow
from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.serving.client import split_payload
from prefect_mlops.tasks.deploy import DeployResult, held_out_rows
from tests.integration.conftest import (
    bundled_config,
    markdown_artifacts,
    serving_process,
    state_env,
)
from tests.ports import free_port

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
TOKEN = "deploy-test-token"


def registry() -> MlflowClient:
    uri = get_settings().resolved_tracking_uri
    return MlflowClient(uri, registry_uri=uri)


def aliases() -> dict[str, str]:
    return {k: str(v) for k, v in registry().get_registered_model(MODEL).aliases.items()}


def served_version(url: str) -> str:
    return httpx.get(f"{url}/version", timeout=10).json()["version"]


def register_copy(version: str) -> RegisteredVersion:
    """A new version holding the same model files as ``version`` (a retrain that changed nothing)."""
    source = registry().get_model_version(MODEL, version)
    created = registry().create_model_version(MODEL, f"models:/{MODEL}/{version}", source.run_id)
    return RegisteredVersion(
        name=MODEL,
        version=str(created.version),
        alias="challenger",
        run_id=source.run_id,
        model_uri=f"models:/{MODEL}/{created.version}",
    )


def register_broken(tmp_path) -> RegisteredVersion:
    """A version that is not a pipeline model: a serving instance must refuse to swap to it."""
    client = registry()
    experiment = client.get_experiment_by_name("fraud-detection")
    run = client.create_run(experiment.experiment_id)
    (tmp_path / "note.txt").write_text("not a model")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"), "model")
    created = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    return RegisteredVersion(
        name=MODEL,
        version=str(created.version),
        alias="challenger",
        run_id=run.info.run_id,
        model_uri=f"models:/{MODEL}/{created.version}",
    )


@pytest.fixture(scope="module")
def first_champion(fraud_file, tmp_path_factory):
    """A registry whose champion the pipeline deployed with no serving instance configured."""
    home = tmp_path_factory.mktemp("deploy-home")
    config = bundled_config("fraud_detection", fraud_file, n_estimators=60)
    # Retrains on the same rows are judged on orchestration here, not on AUC noise.
    config = config.model_copy(
        update={"model_gate": config.model_gate.model_copy(update={"max_regression": None})}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_HOME", str(home))
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
        patch.delenv("MLOPS_SERVING_URLS", raising=False)
        get_settings.cache_clear()
        result = retraining_pipeline_flow(config)
        dataset = preprocess_flow(config)
    get_settings.cache_clear()
    assert (result.decision, result.alias) == ("promoted", "champion")
    assert "no serving instance of this model in MLOPS_SERVING_URLS" in result.deployment
    assert "smoke test passed" in result.deployment
    return {"home": home, "config": config, "dataset": dataset}


@pytest.fixture
def instance(first_champion, monkeypatch):
    """A real `mlops serve` of the champion, and the deploy stage pointed at it."""
    home = first_champion["home"]
    for name, value in state_env(home).items():
        monkeypatch.setenv(name, value)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {"MLOPS_SERVING_ADMIN_TOKEN": TOKEN, "MLOPS_SERVING_POLL_S": "0"}
    with serving_process(MODEL, port, env):
        monkeypatch.setenv("MLOPS_SERVING_URLS", url)
        monkeypatch.setenv("MLOPS_SERVING_ADMIN_TOKEN", TOKEN)
        get_settings.cache_clear()
        yield url
    get_settings.cache_clear()


def deploy(first_champion, candidate: RegisteredVersion, config=None):
    return deploy_flow(
        config or first_champion["config"],
        first_champion["dataset"],
        candidate,
        expected_champion=aliases()["champion"],
        return_state=True,
    )


class Traffic(threading.Thread):
    """Single-row requests in a loop, recording each answer's status and model version."""

    def __init__(self, url: str, row: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.answers = url, {"dataframe_records": [row]}, []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                reply = client.post(f"{self.url}/invocations", json=self.body)
                self.answers.append((reply.status_code, reply.headers.get("X-Model-Version")))


def test_a_new_champion_goes_live_on_the_instance_and_is_smoke_tested(first_champion, instance):
    before = aliases()["champion"]
    assert served_version(instance) == before
    candidate = register_copy(before)
    row = split_payload(held_out_rows(first_champion["dataset"], 1))
    traffic = Traffic(instance, dict(zip(row["columns"], row["data"][0], strict=True)))
    traffic.start()

    state = deploy(first_champion, candidate)
    traffic.stop.set()
    traffic.join(timeout=30)

    # no request failed while the version changed under them, and none went back to the old one
    statuses = {status for status, _ in traffic.answers}
    versions = [version for _, version in traffic.answers]
    assert statuses == {200} and len(versions) > 20, (statuses, len(versions))
    assert versions[0] == before and versions[-1] == candidate.version
    swapped_at = versions.index(candidate.version)
    assert set(versions[swapped_at:]) == {candidate.version}

    assert state.is_completed(), state.message
    result = DeployResult.model_validate(state.result())
    assert (result.verdict, result.champion_version, result.previous_version) == (
        "deployed",
        candidate.version,
        before,
    )
    assert aliases()["champion"] == candidate.version and aliases()["previous"] == before
    assert served_version(instance) == candidate.version  # hot-swapped by the deploy stage
    assert result.reloads == {instance: "swapped"}
    (check,) = result.checks
    assert check.target == instance and check.passed, check.detail
    assert check.served_version == candidate.version and check.rows == 200
    assert check.max_difference == 0.0  # the registry model's own predictions, exactly
    assert check.latency_p95_ms < first_champion["config"].deploy.max_latency_p95_ms
    tags = registry().get_model_version(MODEL, candidate.version).tags
    assert tags["deploy.verdict"] == "deployed" and tags["deploy.instances"] == instance
    report = markdown_artifacts(state.state_details.flow_run_id)["deployment-fraud-detector"]
    assert f"version {candidate.version} — **deployed**" in report and instance in report


def test_a_version_the_instance_refuses_is_rolled_back(first_champion, instance, tmp_path):
    before = aliases()
    broken = register_broken(tmp_path)

    state = deploy(first_champion, broken)

    assert state.name == "RolledBack"
    result = DeployResult.model_validate(state.result(raise_on_failure=False))
    assert result.verdict == "rolled-back"
    assert f"{instance} did not take version {broken.version}: it failed" in result.reason
    assert "not a pipeline model" in result.reason
    assert f"version {before['champion']} is champion again" in state.message
    after = aliases()
    assert after["champion"] == before["champion"] and after.get("previous") == before.get(
        "previous"
    )
    assert after["challenger"] == broken.version
    assert served_version(instance) == before["champion"]  # it never stopped serving it
    tags = registry().get_model_version(MODEL, broken.version).tags
    assert tags["deploy.verdict"] == "rolled-back" and "mlops.rolled_back_at" in tags


def test_unreachable_or_unauthorised_instances_roll_the_deploy_back(
    first_champion, instance, monkeypatch
):
    champion = aliases()["champion"]
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLOPS_SERVING_URLS", dead)
    get_settings.cache_clear()
    state = deploy(first_champion, register_copy(champion))
    assert state.name == "RolledBack"
    assert f"{dead} did not answer the reload" in state.message
    assert aliases()["champion"] == champion

    monkeypatch.setenv("MLOPS_SERVING_URLS", instance)
    monkeypatch.setenv("MLOPS_SERVING_ADMIN_TOKEN", "not-the-token")
    get_settings.cache_clear()
    state = deploy(first_champion, register_copy(champion))
    assert state.name == "RolledBack"
    assert f"{instance} refused the reload (401)" in state.message
    assert "MLOPS_SERVING_ADMIN_TOKEN" in state.message
    assert aliases()["champion"] == champion and served_version(instance) == champion


def test_a_smoke_test_over_budget_rolls_the_pipeline_back(first_champion, instance):
    before = aliases()
    config = first_champion["config"]
    impossible = config.model_copy(
        update={"deploy": config.deploy.model_copy(update={"max_latency_p95_ms": 1e-6})}
    )

    state = retraining_pipeline_flow(impossible, return_state=True)

    assert state.name == "RolledBack"
    result = state.result(raise_on_failure=False)
    assert result.decision == "rolled-back" and result.alias == "challenger"
    assert result.champion_version == before["champion"]
    assert "p95 latency" in result.deployment and "deploy.max_latency_p95_ms" in result.deployment
    assert aliases()["champion"] == before["champion"]
    assert aliases()["challenger"] == result.model_version
    # The instance had swapped to the candidate before the smoke test; it is back on the champion.
    assert served_version(instance) == before["champion"]
