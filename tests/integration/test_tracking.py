"""What MLflow 3 shows of a trained model, against a real tracking server: the logged model's
metrics linked to the split they were measured on, and each run's datasets with their types."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.flows.evaluate import evaluate_flow
from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.train import train_flow
from prefect_mlops.mlops.config import parse_config
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry.registry import logged_model_id
from tests.fixtures import mlflow_server

pytestmark = pytest.mark.slow


def members(n: int, seed: int = 0) -> pd.DataFrame:
    """Club members, about a third of whom leave: whole numbers, floats, true/false, text."""
    rng = np.random.default_rng(seed)
    visits = rng.poisson(3, n)
    spend = rng.gamma(2.0, 30.0, n)
    member = rng.random(n) < 0.4
    plan = rng.choice(["basic", "pro", "max"], n, p=[0.6, 0.3, 0.1])
    signal = 0.4 * visits - 0.01 * spend - 0.8 * member + np.where(plan == "max", 1.0, 0)
    churned = (signal - 0.5 + rng.normal(0, 1, n) > 0).astype(int)
    return pd.DataFrame(
        {
            "id": [f"m{i}" for i in range(n)],
            "visits": visits,
            "spend": spend,
            "member": member,
            "plan": plan,
            "churned": churned,
        }
    )


def column_types(dataset) -> dict[str, str]:
    return {c["name"]: c["type"] for c in json.loads(dataset.schema)["mlflow_colspec"]}


def test_the_logged_model_shows_its_metrics_on_the_splits_they_were_measured_on(
    tmp_path, monkeypatch
):
    source = tmp_path / "members.parquet"
    members(3000).to_parquet(source, index=False)
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
        get_settings.cache_clear()
        config = parse_config(
            {
                "name": "members",
                "data": {"source": str(source), "target": "churned", "id_column": "id"},
                "model": {"name": "members-model"},
                "training": {
                    "n_estimators": 30,
                    "allocator": {"enabled": False},
                    "cluster": {"n_workers": 1, "threads_per_worker": 1},
                },
            }
        )
        dataset = preprocess_flow(config)
        training = train_flow(config, dataset)
        evaluation = evaluate_flow(config, dataset, training)

        client = MlflowClient(uri)
        model_id = logged_model_id(training.model_uri)
        logged = client.get_logged_model(model_id)
        found = client.search_logged_models(
            experiment_ids=[logged.experiment_id], filter_string="metrics.test_roc_auc > 0"
        )
        train_run = client.get_run(training.run_id)
        evaluate_run = client.get_run(evaluation.run_id)

    assert [m.model_id for m in found] == [model_id]
    on_model = {m.key: m for m in logged.metrics}
    for key, value in evaluation.metrics.items():
        metric = on_model[f"test_{key}"]
        assert metric.value == pytest.approx(value)
        assert (metric.dataset_name, metric.dataset_digest) == ("members-test", dataset.version)
        assert metric.run_id == evaluation.run_id
    for key in ("best_validation_binary_logloss", "validation_f1", "validation_f1_at_0.5"):
        metric = on_model[key]
        assert (metric.dataset_name, metric.dataset_digest) == (
            "members-validation",
            dataset.version,
        )
        assert metric.run_id == training.run_id
    # what describes the run, not the model, stays on the run; each model metric once
    for key in ("training_time_s", "validation_binary_logloss"):  # the time, the curve
        assert key not in on_model and key in train_run.data.metrics
    assert len(logged.metrics) == len(on_model)
    assert train_run.data.metrics["test_roc_auc"] == pytest.approx(evaluation.metrics["roc_auc"])

    inputs = {
        next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
        for i in train_run.inputs.dataset_inputs
    }
    assert {c: d.name for c, d in inputs.items()} == {
        "training": "members-train",
        "validation": "members-validation",
    }
    types = column_types(inputs["training"])
    assert (types["visits"], types["spend"], types["member"], types["plan"]) == (
        "long",
        "double",
        "boolean",
        "string",
    )
    assert json.loads(inputs["training"].profile) == {"num_rows": dataset.row_counts["train"]}
    (test_input,) = evaluate_run.inputs.dataset_inputs
    assert (test_input.dataset.name, test_input.dataset.digest) == ("members-test", dataset.version)
    assert column_types(test_input.dataset)["member"] == "boolean"
    assert [m.model_id for m in evaluate_run.inputs.model_inputs] == [model_id]
