"""A user's own file: trained with `mlops run --data`, then that file's rows, as pandas reads
them (integers, booleans, text), scored through the registry's pyfunc, the serving service
and an exported bundle, which agree with each other and label at the model's threshold."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.settings import get_settings
from tests.fixtures import serving_process
from tests.ports import free_port

pytestmark = pytest.mark.slow
MLOPS = str(Path(sys.executable).parent / "mlops")
MODEL = "members-model"


def mlops(*args: str) -> subprocess.CompletedProcess:
    """The real console script, against this session's Prefect API and this test's state."""
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([MLOPS, *args], env=env, capture_output=True, text=True, timeout=600)


def members(n: int, seed: int = 0) -> pd.DataFrame:
    """Club members, about 9% of whom leave: whole numbers, a true/false column, text."""
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, n)
    visits = rng.poisson(3, n)
    member = rng.random(n) < 0.4
    plan = rng.choice(["basic", "pro", "max"], n, p=[0.6, 0.3, 0.1])
    signal = 0.03 * (age - 50) + 0.3 * visits - 0.8 * member + np.where(plan == "max", 1.0, 0)
    churned = (signal - 2.4 + rng.normal(0, 1, n) > 0).astype(int)
    return pd.DataFrame(
        {"age": age, "visits": visits, "member": member, "plan": plan, "churned": churned}
    )


def served_predictions(rows: pd.DataFrame, port: int) -> dict[str, pd.DataFrame]:
    """The rows as a client sends them from pandas: dataframe_split JSON, and CSV."""
    url = f"http://127.0.0.1:{port}/invocations"
    split = json.loads(rows.to_json(orient="split", index=False))
    as_json = httpx.post(url, json={"dataframe_split": split}, timeout=60)
    as_csv = httpx.post(
        url,
        content=rows.to_csv(index=False),
        headers={"Content-Type": "text/csv"},
        timeout=60,
    )
    answers = {}
    for name, response in (("json", as_json), ("csv", as_csv)):
        assert response.status_code == 200, response.text
        answers[name] = pd.DataFrame(response.json()["predictions"])
    return answers


def bundle_predictions(rows: pd.DataFrame, out: Path) -> pd.DataFrame:
    exported = mlops("export", MODEL, "--out", str(out))
    assert exported.returncode == 0, exported.stderr[-3000:]
    sys.path.insert(0, str(out))
    try:
        bundle = importlib.import_module("members_model_predictor").load()
    finally:
        sys.path.remove(str(out))
    return bundle.predict(rows)


def test_a_model_scores_its_own_files_rows_three_ways_at_its_threshold(tmp_path):
    path = tmp_path / "members.csv"
    members(3000).to_csv(path, index=False)
    trained = mlops("run", "--data", str(path), "--target", "churned")
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "Threshold        : test F1 " in trained.stdout  # at its threshold, at 0.5, the best
    assert "the best F1 any threshold gives on test is" in trained.stdout

    rows = pd.read_csv(path)  # as a new user reads it
    assert [str(rows[c].dtype) for c in ("age", "member", "churned")] == ["int64", "bool", "int64"]
    assert pd.api.types.is_string_dtype(rows["plan"])
    features = rows.drop(columns=["churned"])

    pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    expected = pyfunc.predict(features)
    with_target = pyfunc.predict(rows)  # the whole file: the extra column is ignored
    pd.testing.assert_frame_equal(with_target, expected)

    with serving_process(MODEL, port := free_port(), dict(os.environ)):
        served = served_predictions(features, port)
    exported = bundle_predictions(features, tmp_path / "bundle")

    for name, got in {**served, "bundle": exported}.items():
        assert list(got.columns) == ["prediction", "probability"], name
        assert (got["prediction"].astype(str) == expected["prediction"].astype(str)).all(), name
        np.testing.assert_allclose(got["probability"], expected["probability"], rtol=1e-9)

    # the labels are at the threshold chosen on validation and stored with the version
    uri = get_settings().resolved_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias(MODEL, "champion")
    threshold = float(client.get_run(version.run_id).data.params["decision_threshold"])
    assert 0.02 < threshold < 0.4  # 9% positives: best F1 lies well below 0.5
    flagged = expected["probability"].to_numpy() >= threshold
    assert (expected["prediction"].astype(str) == np.where(flagged, "1", "0")).all()
    assert (flagged != (expected["probability"].to_numpy() >= 0.5)).sum() > 50
    assert float(version.tags["test_decision_threshold"]) == pytest.approx(threshold, rel=1e-5)
