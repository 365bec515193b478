"""The Python API on real components: the pipeline on a tiny file, recommend, score, and serve
in a process of its own queried over HTTP."""

from __future__ import annotations

import multiprocessing
import time

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest

import prefect_mlops
from prefect_mlops.mlops.errors import ConfigError
from tests.ports import free_port


def tiny_churn_file(path) -> pd.DataFrame:
    """1,500 customers: an id, three inputs, a binary label that depends on them."""
    rng = np.random.default_rng(3)
    n = 1_500
    frame = pd.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(n)],
            "plan": rng.choice(["basic", "plus", "pro"], n),
            "monthly_spend": rng.gamma(2.0, 30.0, n).round(2),
            "support_calls": rng.poisson(1.5, n),
        }
    )
    logit = -1.5 + 0.8 * frame["support_calls"] - 0.02 * frame["monthly_spend"]
    frame["churned"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.to_csv(path, index=False)
    return frame


def serve_in_child(model: str, port: int) -> None:
    prefect_mlops.serve(model, port=port)


def test_the_api_trains_recommends_scores_and_serves(tmp_path):
    data = tmp_path / "churn.csv"
    frame = tiny_churn_file(data)

    result = prefect_mlops.run_pipeline(data=str(data), target="churned")

    assert result.decision == "promoted" and result.model_name == "churn-model"
    allocation = prefect_mlops.recommend(data=str(data), target="churned")
    assert allocation.workers >= 1 and allocation.history_runs >= 1  # the pipeline's run

    rows = frame.drop(columns="churned").head(200)
    rows.to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "scored"
    scored = prefect_mlops.score(
        "churn-model", str(tmp_path / "new.csv"), str(out), keep=["customer_id"]
    )
    predictions = pd.read_parquet(out)
    assert scored.rows == 200 and scored.version == result.model_version
    assert predictions["customer_id"].tolist() == rows["customer_id"].tolist()

    port = free_port()
    server = multiprocessing.get_context("spawn").Process(
        target=serve_in_child, args=("churn-model", port)
    )
    server.start()
    try:
        body = {"dataframe_records": rows.drop(columns="customer_id").head(5).to_dict("records")}
        answer = wait_for_answer(f"http://127.0.0.1:{port}/invocations", body, server)
        served = [p["probability"] for p in answer["predictions"]]
        np.testing.assert_allclose(served, predictions["probability"][:5], rtol=1e-6)
    finally:
        server.terminate()
        server.join(timeout=30)
    assert server.exitcode is not None

    # Last: loading the pyfunc puts the model's own copy of the package on sys.path, which a
    # process spawned afterwards would import instead of this one.
    pyfunc = mlflow.pyfunc.load_model("models:/churn-model@champion")
    expected = pyfunc.predict(rows.drop(columns="customer_id"))
    assert predictions["prediction"].tolist() == expected["prediction"].tolist()


def wait_for_answer(url: str, body: dict, server, seconds: float = 90) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        try:
            reply = httpx.post(url, json=body, timeout=5)
            if reply.status_code == 200:
                return reply.json()
        except httpx.TransportError:
            pass
        assert server.is_alive() and time.monotonic() < deadline, "serve did not come up"
        time.sleep(0.3)


def test_bad_arguments_raise_the_projects_errors():
    with pytest.raises(ConfigError, match="--config FILE, or --data FILE with --target"):
        prefect_mlops.run_pipeline(data="rows.csv")
    with pytest.raises(ConfigError, match="chunk_rows"):
        prefect_mlops.score("m", "rows.csv", chunk_rows=0)
