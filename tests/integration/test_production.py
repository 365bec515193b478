"""The production profile's storage and security: Prefect and MLflow servers on PostgreSQL behind
authentication, concurrent flow runs and registrations, the registry on both databases, and
model references that are not the registry refused."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.infra.allocator.history import HistoryStore
from prefect_mlops.infra.mlflow_server import UnsafeServerSettings, check_admin_password
from prefect_mlops.model_registry.promotion import promote_to_champion, roll_back_promotion
from prefect_mlops.model_registry.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS,
    ModelReferenceError,
    alias_version,
    parse_reference,
    register_model_version,
)
from tests.fixtures import MLFLOW_PASSWORD, MLFLOW_USER, PREFECT_AUTH, clean_env
from tests.ports import free_port

BIN = Path(sys.executable).parent
CONCURRENT_RUNS = 20


def mlops(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The console script, run with a clean environment plus ``env``."""
    return subprocess.run(
        [str(BIN / "mlops"), *args],
        env=clean_env(home) | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_each_server_refuses_requests_without_valid_credentials(servers):
    flows = f"{servers.prefect_api}/flows/filter"
    user, password = PREFECT_AUTH.split(":")
    assert httpx.post(flows, json={}).status_code == 401
    assert httpx.post(flows, json={}, auth=(user, "wrong")).status_code == 401
    assert httpx.post(flows, json={}, auth=(user, password)).status_code == 200

    experiments = f"{servers.mlflow}/api/2.0/mlflow/experiments/search?max_results=5"
    assert httpx.get(experiments).status_code == 401
    assert httpx.get(experiments, auth=(MLFLOW_USER, "wrong")).status_code == 401
    assert httpx.get(experiments, auth=(MLFLOW_USER, MLFLOW_PASSWORD)).status_code == 200


@pytest.mark.reliability
def test_twenty_flow_runs_and_registrations_at_once_lose_nothing(servers, tmp_path, figures):
    model = "concurrency-model"
    started = time.monotonic()
    env = clean_env(tmp_path) | servers.client_env()
    driver = [sys.executable, "-m", "tests.integration.concurrent_registrations"]
    written = tmp_path / "outcomes.jsonl"
    finished = subprocess.run(
        [*driver, str(CONCURRENT_RUNS), model, servers.history_url, str(written)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    outcomes = [json.loads(line) for line in written.read_text().splitlines()]
    assert [o for o in outcomes if "error" in o] == []
    assert len(outcomes) == CONCURRENT_RUNS
    versions = sorted(int(o["version"]) for o in outcomes)
    assert versions == list(range(1, CONCURRENT_RUNS + 1))  # every registration, once each

    auth = tuple(PREFECT_AUTH.split(":"))
    runs = httpx.post(
        f"{servers.prefect_api}/flow_runs/filter",
        json={"flows": {"name": {"any_": ["concurrent-registration"]}}, "limit": 50},
        auth=auth,
    ).json()
    assert len(runs) == CONCURRENT_RUNS
    assert {run["state_type"] for run in runs} == {"COMPLETED"}
    seconds = time.monotonic() - started
    events = completed_events(servers.prefect_api, [run["id"] for run in runs], auth)
    assert events == CONCURRENT_RUNS  # every Completed event stored
    dead_letters = list((servers.home / "p" / "dlq").glob("*"))
    assert dead_letters == []  # and none given up on its way to the automations

    os.environ.update(
        MLFLOW_TRACKING_USERNAME=MLFLOW_USER, MLFLOW_TRACKING_PASSWORD=MLFLOW_PASSWORD
    )
    try:
        client = MlflowClient(servers.mlflow, registry_uri=servers.mlflow)
        experiment = client.get_experiment_by_name("concurrency")
        logged = client.search_runs([experiment.experiment_id], max_results=100)
        assert sorted(int(r.data.metrics["index"]) for r in logged) == list(range(CONCURRENT_RUNS))
        assert {r.info.status for r in logged} == {"FINISHED"}
        registered = client.search_model_versions(f"name='{model}'", max_results=100)
        assert {r.run_id for r in registered} == {r.info.run_id for r in logged}
    finally:
        for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            os.environ.pop(name, None)

    store = HistoryStore(servers.history_url)
    try:
        recorded = [run for run in store.runs() if run.use_case == "concurrency"]
    finally:
        store.close()
    assert sorted(run.dataset_version for run in recorded) == sorted(
        f"v{i}" for i in range(CONCURRENT_RUNS)
    )
    figures.record(
        "orchestration",
        "20 concurrent flow runs on PostgreSQL (production profile)",
        "20 flow runs start at the same instant, each logging an MLflow run, registering a "
        "version of the same model and recording an allocator run, against Prefect and MLflow "
        "servers on PostgreSQL behind their authentication",
        True,
        "20 runs COMPLETED, 20 Completed events stored, none dead-lettered; 20 MLflow runs "
        "FINISHED; versions exactly 1..20; 20 history rows",
        runs=CONCURRENT_RUNS,
        completed=len(runs),
        completed_events=events,
        dead_lettered=len(dead_letters),
        versions=len(registered),
        seconds=round(seconds, 1),
    )


def completed_events(api: str, flow_run_ids: list[str], auth: tuple[str, ...]) -> int:
    """``prefect.flow-run.Completed`` events stored for these runs (waiting up to 60 s)."""
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.Completed"]},
            "resource": {"id": [f"prefect.flow-run.{i}" for i in flow_run_ids]},
        },
        "limit": 50,
    }
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.post(f"{api}/events/filter", json=body, auth=auth, timeout=30)
        answer.raise_for_status()
        found = len({e["resource"]["prefect.resource.id"] for e in answer.json()["events"]})
        if found >= len(flow_run_ids) or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_the_registry_registers_promotes_and_rolls_back_on_both_databases(database_url):
    uri = database_url()
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("registry", artifact_location="file:///tmp/unused")
    versions = []
    for index in range(2):
        run_id = client.create_run(experiment).info.run_id
        registered = register_model_version(client, "m", f"runs:/{run_id}/model", run_id, {})
        versions.append(registered.version)
        promote_to_champion(
            client, "m", registered.version, versions[0] if index else None, contextlib.nullcontext
        )
    assert versions == ["1", "2"]
    assert (alias_version(client, "m", CHAMPION), alias_version(client, "m", PREVIOUS)) == (
        "2",
        "1",
    )
    promotion = promote_to_champion(client, "m", "2", "2", contextlib.nullcontext)
    assert promotion.moved is False  # already champion: nothing to undo
    second = promote_to_champion(client, "m", "1", "2", contextlib.nullcontext)
    roll_back_promotion(client, second, "smoke test failed", contextlib.nullcontext)
    assert alias_version(client, "m", CHAMPION) == "2"
    assert alias_version(client, "m", CHALLENGER) == "1"


def test_a_guessable_mlflow_admin_password_stops_the_start(tmp_path):
    for password in ("password1234", "short", "admin"):
        with pytest.raises(UnsafeServerSettings, match="MLOPS_MLFLOW_ADMIN_PASSWORD"):
            check_admin_password("admin", password)
    port = free_port()
    refused = mlops(
        tmp_path, "mlflow-server", "--port", str(port), MLOPS_MLFLOW_ADMIN_PASSWORD="password1234"
    )
    assert refused.returncode == 2
    assert "MLflow's published default password" in refused.stderr
    with pytest.raises(httpx.ConnectError):  # nothing was started
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)


@pytest.mark.parametrize(
    "reference",
    ["/tmp/model.pkl", "model.pkl", "./models/m", "runs:/0a1b/model", "file:///tmp/m", "s3://b/m"],
)
def test_models_are_loaded_only_from_the_registry(reference):
    with pytest.raises(ModelReferenceError, match="only from the MLflow registry"):
        parse_reference(reference)


def test_registry_references_still_parse():
    assert parse_reference("fraud-detector") == ("fraud-detector", CHAMPION, None)
    assert parse_reference("models:/fraud-detector@previous") == (
        "fraud-detector",
        "previous",
        None,
    )
    assert parse_reference("fraud-detector/3") == ("fraud-detector", None, "3")


def test_serve_refuses_a_pickle_even_when_told_to_wait(tmp_path):
    pickle = tmp_path / "model.pkl"
    pickle.write_bytes(b"\x80\x04K\x01.")  # a valid pickle: it must never be opened
    refused = mlops(tmp_path, "serve", str(pickle), "--wait-for-model", "--port", str(free_port()))
    assert refused.returncode == 2
    assert "is not a registered model" in refused.stderr
