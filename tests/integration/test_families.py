"""Both model families through the whole pipeline on real components: an XGBoost version that
the pyfunc, the service and an exported bundle score alike; a use case that trains both and
keeps the better; the model gate judging a candidate of one family against a champion of the
other on the same test rows; the allocator's history recording each family's runs."""

from __future__ import annotations

import importlib
import sys

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.infra.allocator.planner import recorded_runs
from prefect_mlops.mlops.dataset import TARGET_COLUMN, load_dataset_ref, read_split
from prefect_mlops.mlops.prediction import class_scores
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry.export import export_bundle
from prefect_mlops.tasks.evaluation import compute_metrics
from tests.fixtures import bundled_config, state_env


def registry(uri: str) -> MlflowClient:
    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture
def in_home(monkeypatch):
    """Point this test's settings and MLflow at another state folder (``in_home(home)``)."""

    def enter(home):
        for name, value in state_env(home).items():
            monkeypatch.setenv(name, value)
        mlflow.set_tracking_uri(state_env(home)["MLFLOW_TRACKING_URI"])
        mlflow.set_registry_uri(state_env(home)["MLFLOW_TRACKING_URI"])
        get_settings.cache_clear()

    yield enter
    get_settings.cache_clear()


def artifacts(client: MlflowClient, run_id: str, path: str = "") -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


def test_an_xgboost_version_is_logged_like_lightgbm_and_scores_alike_everywhere(
    served_registry_xgboost, served_registry, in_home, tmp_path
):
    xgb, lgb = served_registry_xgboost, served_registry
    in_home(xgb["home"])
    client = registry(xgb["uri"])
    run = client.get_run(xgb["training_run_id"])
    assert run.data.tags["mlops.family"] == "xgboost"
    assert run.data.params["objective"] == "binary:logistic"
    assert run.data.params["grow_policy"] == "lossguide"
    other = registry(lgb["uri"]).get_run(lgb["training_run_id"])
    # The same plots, the same metric names (the validation curve's included) for both families.
    lightgbm_files = artifacts(registry(lgb["uri"]), lgb["training_run_id"])
    xgboost_files = artifacts(client, xgb["training_run_id"])
    assert {f for f in xgboost_files if f.startswith("plots/")} == {
        f for f in lightgbm_files if f.startswith("plots/")
    }
    assert set(run.data.metrics) == set(other.data.metrics)

    rows, expected = xgb["rows"], xgb["expected"]  # the registered pyfunc's predictions
    assert type(xgb["served"].predictor).__name__ == "XGBoostPredictor"
    pd.testing.assert_frame_equal(xgb["served"].predict(rows), expected)
    bundle = export_bundle(client, "fraud-detector@champion", tmp_path / "bundle", xgb["uri"])
    assert bundle.requirements[0].startswith("xgboost-cpu==")  # as the version was logged
    sys.path.insert(0, str(bundle.path))
    try:
        exported = importlib.import_module(bundle.package).load()
    finally:
        sys.path.remove(str(bundle.path))
    assert exported.model.facts.family == "xgboost"
    pd.testing.assert_frame_equal(exported.predict(rows), expected)

    runs = [r for r in recorded_runs(get_settings()) if r.use_case == "fraud-detection"]
    assert {r.family for r in runs} == {"xgboost"} and {r.status for r in runs} == {"success"}


@pytest.fixture(scope="module")
def both_families_home(fraud_file, tmp_path_factory):
    """A registry whose champion is the better of a LightGBM and an XGBoost model trained by
    one pipeline run (``training.family: [lightgbm, xgboost]``)."""
    home = tmp_path_factory.mktemp("both-families-home")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in state_env(home).items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        config = bundled_config(
            "fraud_detection", fraud_file, n_estimators=80, family=["lightgbm", "xgboost"]
        )
        result = retraining_pipeline_flow(config)
        assert (result.model_version, result.decision) == ("1", "promoted"), result
    get_settings.cache_clear()
    return home, result


def test_a_use_case_naming_both_families_keeps_the_lower_validation_loss(
    both_families_home, in_home
):
    home, result = both_families_home
    in_home(home)
    client = registry(state_env(home)["MLFLOW_TRACKING_URI"])
    run = client.get_run(result.training_run_id)
    losses = {
        family: run.data.metrics[f"family_{family}_best_validation_binary_logloss"]
        for family in ("lightgbm", "xgboost")
    }
    kept = min(losses, key=losses.get)
    assert run.data.tags["mlops.family"] == kept
    assert run.data.tags["mlops.families_compared"].split(",")[0] == kept
    assert run.data.metrics["best_validation_binary_logloss"] == pytest.approx(losses[kept])
    champion = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
    assert champion.unwrap_python_model().predictor.facts.family == kept

    runs = [r for r in recorded_runs(get_settings()) if r.dataset_version == result.dataset_version]
    assert sorted(r.family for r in runs) == ["lightgbm", "xgboost"]  # each run recorded
    assert {r.family: r.final_metric for r in runs} == pytest.approx(losses)
    assert all(r.status == "success" and r.workers == runs[0].workers for r in runs)


def test_the_gate_judges_a_candidate_of_one_family_against_a_champion_of_the_other(
    both_families_home, in_home, fraud_file
):
    home, first = both_families_home
    in_home(home)
    champion_family = (
        registry(state_env(home)["MLFLOW_TRACKING_URI"])
        .get_run(first.training_run_id)
        .data.tags["mlops.family"]
    )
    other = "xgboost" if champion_family == "lightgbm" else "lightgbm"
    weak = bundled_config(
        "fraud_detection",
        fraud_file,
        family=other,
        n_estimators=2,
        num_leaves=3,
        early_stopping_rounds=0,
    )
    state = retraining_pipeline_flow(weak, return_state=True)

    assert state.is_failed() and state.name == "Rejected"
    result = state.result(raise_on_failure=False)
    assert (result.decision, result.champion_version) == ("rejected", "1")
    assert result.dataset_version == first.dataset_version  # the same data, the same test rows
    assert result.metrics["roc_auc"] < result.champion_metrics["roc_auc"]
    # Both numbers are each model's score on the very same test rows.
    dataset = load_dataset_ref(result.dataset_uri)
    test = read_split(dataset, "test")
    for version, metrics, family in (
        ("1", result.champion_metrics, champion_family),
        (result.model_version, result.metrics, other),
    ):
        model = mlflow.pyfunc.load_model(f"models:/fraud-detector/{version}")
        assert model.unwrap_python_model().predictor.facts.family == family
        predictions = model.predict(test)
        scores = class_scores(predictions, "binary", dataset.classes)
        recomputed = compute_metrics("binary", test[TARGET_COLUMN].to_numpy(), scores)
        assert recomputed["roc_auc"] == pytest.approx(metrics["roc_auc"], rel=1e-9)
