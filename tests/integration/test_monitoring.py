"""The inference log of a real `mlops serve`, and the drift monitor flow on a real registry and Prefect API.

The champion is the session's served fraud model; each test has its own artifact store, so its
inference log and feedback files are its own.
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

import httpx
import numpy as np
import orjson
import pandas as pd
from mlflow.tracking import MlflowClient
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter

from prefect_mlops.flows.monitor import drift_monitor_flow
from prefect_mlops.mlops.dataset import load_dataset_ref, read_split
from prefect_mlops.mlops.storage import artifact_store
from prefect_mlops.serving.app import score_body
from prefect_mlops.serving.client import split_payload
from prefect_mlops.serving.inference_log import InferenceLog
from prefect_mlops.serving.log_reader import load_parquet_window
from prefect_mlops.serving.log_sinks import ParquetSink
from prefect_mlops.serving.traffic import drift_rows, sample_rows
from prefect_mlops.tasks.monitoring import DRIFT_EVENT
from tests.integration.conftest import bundled_config, markdown_artifacts, serving_process
from tests.ports import free_port

MODEL = "fraud-detector"
TOKEN = "monitor-test-token"
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def champion_test_rows(served_registry) -> tuple[pd.DataFrame, pd.Series, object]:
    uri = served_registry["uri"]
    version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(MODEL, "champion")
    dataset = load_dataset_ref(version.tags["data.uri"])
    return read_split(dataset, "test"), dataset.target, dataset.feature_spec


def log_traffic(served, rows: pd.DataFrame, batch: int = 10) -> list[str]:
    """Score ``rows`` as the service does and log the requests; returns their ids."""
    log = InferenceLog(ParquetSink(artifact_store().inference_log_root))
    ids = []
    for start in range(0, len(rows), batch):
        body = orjson.dumps({"dataframe_split": split_payload(rows.iloc[start : start + batch])})
        _, count, outputs = score_body(body, "application/json", served)
        ids.append(uuid.uuid4().hex)
        log.record(ids[-1], served, body, "application/json", count, outputs)
    assert log.flush()
    return ids


def monitor_config(fraud_file):
    config = bundled_config("fraud_detection", fraud_file)
    return config.model_copy(
        update={"monitoring": config.monitoring.model_copy(update={"min_rows": 300})}
    )


def drift_events(since: dt.datetime, timeout: float = 30) -> list:
    """The drift events the Prefect server has stored since ``since`` (polled: events land async)."""
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                EventFilter(event=EventNameFilter(name=[DRIFT_EVENT]), occurred={"since": since}),
                limit=50,  # the server's maximum (the client's default, 100, is refused)
            )
            if page.events or time.monotonic() > deadline:
                return page.events
            time.sleep(1)


# ---------------------------------------------------------------- the service's log


def test_mlops_serve_logs_scored_requests_to_parquet_and_keeps_checks_out(served_registry, store):
    port = free_port()
    env = os.environ | served_registry["env"]
    env |= {
        "MLOPS_ARTIFACT_STORE": str(store),
        "MLOPS_SERVING_ADMIN_TOKEN": TOKEN,
        "MLOPS_INFERENCE_LOG_FLUSH_S": "600",  # written on demand and at shutdown here
    }
    rows = served_registry["rows"].head(30)
    url = f"http://127.0.0.1:{port}"
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with serving_process(MODEL, port, env) as server, httpx.Client(timeout=10) as http:
        answers = {}
        for i in range(0, 30, 3):
            body = {"dataframe_split": split_payload(rows.iloc[i : i + 3])}
            reply = http.post(f"{url}/invocations", json=body, headers={"X-Request-Id": f"r{i}"})
            assert reply.status_code == 200 and reply.headers["X-Request-Id"] == f"r{i}"
            answers[f"r{i}"] = reply.json()["predictions"]
        fresh = http.post(f"{url}/invocations", json={"dataframe_split": split_payload(rows[:1])})
        assert len(fresh.headers["X-Request-Id"]) == 32  # one is made when the client sends none
        check = {"X-Request-Id": "smoke", "X-Inference-Log": "skip"}
        assert http.post(f"{url}/invocations", json=body, headers=check).status_code == 200
        assert http.post(f"{url}/invocations", json={"bad": 1}).status_code == 400
        assert http.post(f"{url}/admin/flush-log").status_code == 401

        flushed = http.post(f"{url}/admin/flush-log", headers=admin)
        assert flushed.status_code == 200, flushed.text
        assert flushed.json()["written_rows"] == 31 and len(flushed.json()["written"]) == 1
        http.post(f"{url}/invocations", json=body, headers={"X-Request-Id": "last"})
        server.terminate()  # what is queued at shutdown is written too
        server.wait(timeout=20)

    logged, skipped = load_parquet_window(artifact_store().inference_log_root, MODEL, EPOCH)
    assert skipped == []
    assert len(logged) == 34 and set(logged["version"]) == {served_registry["version"]}
    assert "smoke" not in set(logged["request_id"])  # the check was not traffic
    first = logged[logged["request_id"] == "r0"].sort_values("row")
    assert first["row"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(first["input.amount"], rows["amount"][:3])
    np.testing.assert_allclose(
        first["output.probability"], [p["probability"] for p in answers["r0"]]
    )


# ---------------------------------------------------------------- the monitor


def test_undrifted_traffic_is_stable_and_bad_files_are_skipped(served_registry, store, fraud_file):
    test, target, spec = champion_test_rows(served_registry)
    rows, labels = sample_rows(test, spec, target, 600, seed=1)
    ids = log_traffic(served_registry["served"], rows)
    day = next((store / "inference-log" / MODEL).iterdir())
    (day / "cut-short.parquet").write_bytes(b"PAR1\x00\x01 not really parquet")
    pd.DataFrame({"something": ["else"]}).to_parquet(day / "foreign.parquet")
    feedback = store / "feedback" / MODEL
    feedback.mkdir(parents=True)
    pd.DataFrame(
        {"request_id": np.repeat(ids, 10), "row": np.tile(range(10), len(ids)), "label": labels}
    ).to_csv(feedback / "labels.csv", index=False)
    (feedback / "broken.csv").write_text("not,a,feedback\nfile")
    since = dt.datetime.now(dt.UTC)

    state = drift_monitor_flow(monitor_config(fraud_file), return_state=True)

    assert state.is_completed(), state.message
    report = state.result()
    assert report.status == "no-drift", report.reason
    assert report.rows == 600 and report.drifted_features == []
    assert report.prediction is not None and not report.prediction.drifted
    assert len(report.features) == 9 and "transaction_time (datetime)" in report.not_compared
    assert len(report.skipped_files) == 3
    assert report.performance.labelled_rows == 600 and "roc_auc" in report.performance.metrics
    assert report.event is None
    artifact = markdown_artifacts(state.state_details.flow_run_id)[f"drift-{MODEL}"]
    assert "**no-drift**" in artifact and "cut-short.parquet" in artifact
    assert drift_events(since, timeout=5) == []


def test_drifted_traffic_is_reported_and_emits_one_event_per_cooldown(
    served_registry, store, fraud_file
):
    test, target, spec = champion_test_rows(served_registry)
    rows, _ = sample_rows(test, spec, target, 600, seed=2)
    log_traffic(served_registry["served"], drift_rows(rows, spec, seed=2))
    since = dt.datetime.now(dt.UTC)
    config = monitor_config(fraud_file)

    report = drift_monitor_flow(config)
    again = drift_monitor_flow(config)

    assert report.status == "drift"
    assert len(report.drifted_features) >= 5 and "amount" in report.drifted_features
    assert report.event == DRIFT_EVENT
    (event,) = drift_events(since)
    assert event.resource.id == f"mlops.model.{MODEL}"
    assert event.payload["config"]["model"]["name"] == MODEL  # what the trigger passes on
    assert set(event.payload["drifted_features"]) == set(report.drifted_features)
    assert again.status == "drift" and again.event is None
    assert "cooldown" in again.event_note
    client = MlflowClient(served_registry["uri"])
    files = {f.path for f in client.list_artifacts(report.mlflow_run_id)}
    assert {"drift_report.md", "drift_report.json", "drift"} <= files
    plots = {f.path for f in client.list_artifacts(report.mlflow_run_id, "drift")}
    assert "drift/drift_amount.png" in plots
    assert len(plots) == len(report.drifted_features) + 1  # and the predictions' distribution
    run = client.get_run(report.mlflow_run_id)
    assert run.data.tags["drift.status"] == "drift"
    assert run.data.metrics["psi.amount"] >= 0.2
