"""Decision thresholds through the real pipeline: chosen on validation and logged by the train
stage, reported at the threshold and at 0.5 by evaluation and the gate, floors judged at each
model's own threshold, and a threshold section refused before training when the inferred task
has none."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.gates import format_value
from prefect_mlops.mlops.settings import get_settings
from tests.integration.test_own_file import members

pytestmark = pytest.mark.slow
MLOPS = str(Path(sys.executable).parent / "mlops")


def mlops(*args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run([MLOPS, *args], env=env, capture_output=True, text=True, timeout=600)


def client() -> MlflowClient:
    uri = get_settings().resolved_tracking_uri
    return MlflowClient(uri, registry_uri=uri)


def write_config(folder: Path, source: Path, **sections) -> Path:
    config = {
        "name": "members",
        "data": {"source": str(source), "target": "churned"},
        "model": {"name": "members-model"},
        "training": {"n_estimators": 100},
        **sections,
    }
    path = folder / f"members-{len(list(folder.glob('*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def stage_run(stage: str, after: float = 0):
    experiment = client().get_experiment_by_name("members")
    runs = client().search_runs(
        [experiment.experiment_id],
        f"tags.`mlops.stage` = '{stage}' and attributes.start_time > {int(after)}",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0]


def test_floors_apply_at_each_models_threshold_and_both_thresholds_are_reported(tmp_path):
    source = tmp_path / "members.csv"
    members(3000).to_csv(source, index=False)
    floors = {"metric_floors": {"recall": 0.3, "roc_auc": 0.6}}

    chosen = write_config(tmp_path, source, model_gate=floors)
    first = mlops("run", "--config", str(chosen))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    train = stage_run("train")
    threshold = float(train.data.params["decision_threshold"])
    assert train.data.params["threshold.objective"] == "f1"  # the default for binary tasks
    assert threshold < 0.5
    assert {"validation_f1", "validation_f1_at_0.5"} <= set(train.data.metrics)
    assert train.data.metrics["validation_f1"] >= train.data.metrics["validation_f1_at_0.5"]
    plots = {a.path for a in client().list_artifacts(train.info.run_id, "plots")}
    assert "plots/validation_threshold_choice.png" in plots
    test = stage_run("evaluate").data.metrics
    assert test["test_decision_threshold"] == pytest.approx(threshold)
    assert test["test_recall"] >= 0.3 > test["test_recall_at_0.5"]  # the floor bites at 0.5
    assert test["test_best_possible_f1"] >= test["test_f1"]
    version = client().get_model_version_by_alias("members-model", "champion")
    floor = version.tags["gate.model.metric.recall.floor"]
    assert floor.startswith(f"pass | value {format_value(test['test_recall'])} |")

    # The same model labelling at 0.5 is rejected by the floor its chosen threshold passed,
    # and the gate compares it with the champion each at its own threshold.
    started = client().get_run(train.info.run_id).info.start_time
    fixed = write_config(
        tmp_path,
        source,
        model_gate=floors,
        training={"n_estimators": 100, "threshold": {"objective": "fixed", "value": 0.5}},
    )
    second = mlops("run", "--config", str(fixed))
    assert second.returncode == 3, second.stdout[-3000:] + second.stderr[-3000:]
    assert "test recall at its decision threshold 0.5 ≥ 0.3: fail" in second.stdout
    gate = stage_run("model-gate", after=started).data.metrics
    assert gate["candidate_decision_threshold"] == 0.5
    assert gate["champion_decision_threshold"] == pytest.approx(threshold)
    assert gate["champion_recall"] == pytest.approx(test["test_recall"])
    assert gate["candidate_recall"] == pytest.approx(test["test_recall_at_0.5"])
    assert gate["candidate_roc_auc"] == pytest.approx(gate["champion_roc_auc"])  # same scores


def test_a_threshold_for_an_inferred_regression_is_refused_before_training(tmp_path):
    source = tmp_path / "members.csv"
    members(600).to_csv(source, index=False)
    config = write_config(
        tmp_path,
        source,
        data={"source": str(source), "target": "age"},  # 62 distinct whole numbers: regression
        training={"n_estimators": 20, "threshold": {"objective": "cost"}},
    )
    result = mlops("run", "--config", str(config))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    message = result.stderr.split("error: ")[-1]
    assert f"training.threshold in {config} applies to binary tasks only" in message
    assert "this task is regression" in message and "inferred" in message
    assert "Traceback" not in message
    experiment = client().get_experiment_by_name("members")
    stages = {
        run.data.tags.get("mlops.stage") for run in client().search_runs([experiment.experiment_id])
    }
    assert "preprocess" in stages and "train" not in stages  # refused before any training
    assert client().search_registered_models() == []
