"""Simulated traffic against a real `mlops serve`: scored, written out on request, labelled."""

from __future__ import annotations

import os

import pandas as pd

from prefect_mlops.mlops.dataset import read_split
from prefect_mlops.mlops.feedback import write_feedback
from prefect_mlops.serving.client import request_log_flush
from prefect_mlops.serving.traffic import drift_rows, feedback_frame, sample_rows, send_traffic
from tests.integration.conftest import serving_process
from tests.ports import free_port

TOKEN = "traffic-test-admin-token"


def test_simulated_traffic_is_scored_written_out_and_labelled(served_registry, tmp_path):
    dataset = served_registry["dataset"]
    spec = dataset.feature_spec
    rows, outcomes = sample_rows(read_split(dataset, "test"), spec, dataset.target, 30, seed=1)
    port = free_port()
    env = os.environ | served_registry["env"] | {"MLOPS_SERVING_ADMIN_TOKEN": TOKEN}
    with serving_process("fraud-detector", port, env):
        url = f"http://127.0.0.1:{port}"
        sent = send_traffic(url, drift_rows(rows, spec, seed=1), outcomes, batch_rows=3)
        assert (sent.ok, sent.errors) == (10, {})
        assert sent.versions == {str(served_registry["version"]): 10}

        refused = request_log_flush(url, "not-the-token")
        assert (refused.status_code, refused.written_rows) == (401, None)
        flushed = request_log_flush(url, TOKEN)
        assert (flushed.status_code, flushed.written_rows) == (200, 30)

    labels = pd.read_csv(write_feedback(str(tmp_path / "feedback"), feedback_frame(sent)))
    assert len(labels) == 30 and set(labels["request_id"]) == set(sent.request_ids)
    assert labels["row"].tolist() == [0, 1, 2] * 10  # each request's rows, in order
    assert labels["label"].astype(str).tolist() == outcomes.tolist()
