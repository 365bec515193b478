"""The whole retraining pipeline against real Prefect, Dask and MLflow."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.flows.evaluate import evaluate_flow
from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.register import register_flow
from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.flows.train import train_flow
from prefect_mlops.mlops.dataset import read_split
from prefect_mlops.model_registry.tracking import tracking_uri_for

pytestmark = pytest.mark.slow


def client_for(config) -> MlflowClient:
    uri = tracking_uri_for(config)
    return MlflowClient(uri, registry_uri=uri)


def artifact_paths(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_fraud_pipeline_registers_a_tracked_champion(fraud_config):
    result = retraining_pipeline_flow(fraud_config)

    assert (result.model_name, result.model_version, result.alias, result.decision) == (
        "fraud-detector",
        "1",
        "champion",
        "promoted",
    )
    assert result.champion_metrics is None  # the first version had no champion to beat
    assert 0.75 < result.metrics["roc_auc"] <= 1.0
    assert 0.0 < result.metrics["log_loss"] < 0.1
    assert result.metrics["accuracy"] > 0.97  # above the ~98.5% majority baseline minus noise

    client = client_for(fraud_config)
    assert str(client.get_model_version_by_alias("fraud-detector", "champion").version) == "1"
    version = client.get_model_version("fraud-detector", "1")
    assert version.tags["data.version"] == result.dataset_version
    assert version.tags["git.commit"] and version.tags["prefect.flow_run_id"] != "none"
    # no serving instance configured: the deploy stage checked the serving code in-process
    assert version.tags["deploy.verdict"] == "deployed"
    assert version.tags["deploy.instances"] == "in-process"
    assert "checked in-process; smoke test passed" in result.deployment

    parent = client.get_run(result.pipeline_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test_roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.pipeline_run_id}'"
    )
    assert sorted(r.data.tags["mlops.stage"] for r in children) == [
        "data-gate",
        "deploy",
        "evaluate",
        "model-gate",
        "preprocess",
        "register",
        "train",
    ]

    train_run = client.get_run(result.training_run_id)
    assert train_run.data.params["objective"] == "binary"
    assert train_run.data.tags["prefect.flow_run_id"] != "none"
    history = client.get_metric_history(result.training_run_id, "validation_binary_logloss")
    assert len(history) == int(train_run.data.metrics["iterations_run"]) > 1
    best = int(train_run.data.params["best_iteration"])
    assert min(h.value for h in history) == pytest.approx(history[best - 1].value)
    plots = artifact_paths(client, result.training_run_id)
    assert {
        "plots/feature_importance.png",
        "plots/learning_curve.png",
        "plots/validation_roc_curve.png",
        "plots/validation_confusion_matrix.png",
    } <= plots
    assert {i.dataset.digest for i in train_run.inputs.dataset_inputs} == {result.dataset_version}
    # Evaluation kept the candidate's test scores beside the dataset version, for the gate.
    assert len(list(Path(result.dataset_uri, "scores", "test").glob("*.npz"))) == 1
    evaluate_run = next(r for r in children if r.data.tags["mlops.stage"] == "evaluate")
    assert "plots/test_precision_recall_curve.png" in artifact_paths(
        client, evaluate_run.info.run_id
    )

    # The registered model takes raw rows and predicts through the shared feature code.
    model = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
    assert model.metadata.signature is not None
    dataset = preprocess_flow(fraud_config)  # same source + settings: the same version, reused
    assert dataset.version == result.dataset_version
    test_rows = read_split(dataset, "test").head(200)
    predictions = model.predict(test_rows[dataset.feature_spec.input_columns])
    assert list(predictions.columns) == ["prediction", "probability"]
    assert predictions["probability"].between(0, 1).all()
    assert set(predictions["prediction"]) <= {"0", "1"}


def test_stages_run_alone_and_a_registered_version_waits_as_challenger(fraud_config):
    first = retraining_pipeline_flow(fraud_config)
    dataset = preprocess_flow(fraud_config)
    training = train_flow(fraud_config, dataset)
    evaluation = evaluate_flow(fraud_config, dataset, training)
    registered = register_flow(fraud_config, dataset, training, evaluation)

    assert first.alias == "champion"
    assert (registered.version, registered.alias) == ("2", "challenger")
    client = client_for(fraud_config)
    assert str(client.get_model_version_by_alias("fraud-detector", "champion").version) == "1"
    standalone = client.get_run(training.run_id)
    assert "mlflow.parentRunId" not in standalone.data.tags  # a top-level run when run alone
    assert np.isfinite(evaluation.metrics["roc_auc"])


def test_car_dealership_multiclass(cars_config):
    result = retraining_pipeline_flow(cars_config)
    assert (result.model_version, result.alias) == ("1", "champion")
    # six unbalanced classes (3% to 34%): always guessing the majority class scores 0.34
    assert result.metrics["accuracy"] > 0.55
    assert 0.4 < result.metrics["f1"] <= 1.0
    assert result.metrics["roc_auc"] > 0.7
    client = client_for(cars_config)
    train_run = client.get_run(result.training_run_id)
    assert train_run.data.params["objective"] == "multiclass"
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}@champion")
    output_columns = [c["name"] for c in model.metadata.signature.outputs.to_dict()]
    assert output_columns[0] == "prediction" and len(output_columns) == 7


def test_early_stopping_stops_all_workers_together_and_can_be_turned_off(fraud_file):
    from tests.integration.conftest import bundled_config

    two_workers = {"enabled": False}  # the configured 2 workers, whatever the allocator thinks
    eager = bundled_config(
        "fraud_detection",
        fraud_file,
        n_estimators=400,
        early_stopping_rounds=5,
        learning_rate=0.3,
        allocator=two_workers,
    )
    dataset = preprocess_flow(eager)
    stopped = train_flow(eager, dataset)
    # stopped well before the budget, 5 rounds after the best one, without hanging a worker
    assert stopped.iterations_run == stopped.best_iteration + 5 < 400
    assert stopped.cluster.n_workers == 2

    fixed = bundled_config(
        "fraud_detection",
        fraud_file,
        n_estimators=12,
        early_stopping_rounds=0,
        allocator=two_workers,
    )
    kept = train_flow(fixed, preprocess_flow(fixed))
    assert kept.iterations_run == kept.best_iteration == 12
    client = client_for(fixed)
    assert len(client.get_metric_history(kept.run_id, "validation_binary_logloss")) == 12


def test_workers_report_the_kept_models_validation_scores(fraud_file, tmp_path):
    """The plots use the scores the workers computed; they must be the kept model's predictions."""
    from prefect_mlops.infra.dask_cluster import dask_client
    from prefect_mlops.mlops.families.lightgbm.training import train_lightgbm_on_dask
    from prefect_mlops.mlops.prediction import class_scores
    from tests.integration.conftest import bundled_config

    config = bundled_config(
        "fraud_detection", fraud_file, n_estimators=300, early_stopping_rounds=5, learning_rate=0.3
    )
    dataset = preprocess_flow(config)
    with dask_client(config.training.cluster) as client:
        trained = train_lightgbm_on_dask(client, dataset, config.training, str(tmp_path / "work"))
    assert trained.iterations_run == trained.best_iteration + 5  # cut back to the best round
    frame = read_split(dataset, "validation")
    expected = trained.predictor.predict(frame)
    np.testing.assert_allclose(
        trained.validation_scores,
        class_scores(expected, "binary", dataset.classes),
        rtol=1e-6,
        atol=1e-9,
    )
    np.testing.assert_array_equal(trained.validation_targets, frame["__target__"].to_numpy())
