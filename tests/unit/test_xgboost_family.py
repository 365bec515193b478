"""The model-family contract for XGBoost on small datasets of each task: train with
``xgboost.dask`` on a real Dask cluster, write the model's files, load a predictor from those
files alone and score the same; the parameter mapping from the use case's (LightGBM-named)
parameters; a tuning trial in one process; the MLflow pyfunc, the serving service and an
exported bundle all predicting with the XGBoost predictor class."""

from __future__ import annotations

import importlib
import json
import logging
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from distributed import Client, LocalCluster

from prefect_mlops import mlops
from prefect_mlops.mlops.config import TrainingConfig, parse_config
from prefect_mlops.mlops.dataset import TARGET_COLUMN, read_split
from prefect_mlops.mlops.families import FAMILIES, TrialResult, family, load_predictor, model_family
from prefect_mlops.mlops.families.xgboost.predictor import REQUIREMENTS, XGBoostPredictor
from prefect_mlops.mlops.families.xgboost.training import (
    balanced_weights,
    min_child_weight,
    xgboost_params,
)
from prefect_mlops.mlops.model_files import read_pipeline_model
from prefect_mlops.mlops.prediction import class_scores
from prefect_mlops.mlops.pyfunc import PipelinePyfunc
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.model_registry.export import _write_bundle
from prefect_mlops.serving.served_model import ServedModel
from prefect_mlops.tasks.preprocessing import build_dataset_version

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def small_config(home: Path, use_case: str, rows: int, **changes) -> object:
    """A bundled use case on a small generated file; ``changes`` patch the YAML's sections."""
    generator = {"fraud_detection": "fraud", "car_dealership": "car_dealership"}[use_case]
    source = write_dataset(generator, rows, home / f"{use_case}-{rows}.parquet", seed=3)
    raw = yaml.safe_load((CONFIGS / f"{use_case}.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"].update(
        {"family": "xgboost", "n_estimators": 80, "learning_rate": 0.2, "early_stopping_rounds": 5}
    )
    for section, values in changes.items():
        raw[section].update(values)
    return parse_config(raw, origin=f"{use_case} (test)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple]:
    """An XGBoost model per task, each trained by the family on a two-worker LocalCluster."""
    home = tmp_path_factory.mktemp("xgboost-family")
    configs = {
        "binary": small_config(home, "fraud_detection", 3_000),
        "multiclass": small_config(home, "car_dealership", 2_000),
        "regression": small_config(  # a customer's children, from household size and more
            home, "car_dealership", 2_000, data={"target": "children", "task": "regression"}
        ),
    }
    out = {}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        for task, config in configs.items():
            store = str(home / f"store-{task}")
            dataset = build_dataset_version(config, store, fingerprint_source(config.data))
            model = family("xgboost").train(client, dataset, config.training, str(home / "work"))
            out[task] = (model, dataset, config)
    return out


def test_the_trainer_returns_a_predictor_cut_to_its_best_round(trained):
    model, dataset, _ = trained["binary"]
    assert type(model.predictor) is XGBoostPredictor
    assert model.predictor.facts.family == "xgboost"
    assert model.predictor.booster.num_boosted_rounds() == model.best_iteration
    assert model.best_iteration < model.iterations_run == len(model.validation_curve)
    assert model.validation_metric == "binary_logloss"  # LightGBM's name: the families compare
    assert model.params["objective"] == "binary:logistic"
    assert len(model.validation_scores) == dataset.row_counts["validation"]
    # The curve is the log-loss of the whole validation split (reduced across both workers):
    # at the kept round it is the log-loss of the scores handed on for the plots.
    p = np.clip(model.validation_scores, 1e-15, 1 - 1e-15)
    y = model.validation_targets
    logloss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss == pytest.approx(model.validation_curve[model.best_iteration - 1], rel=1e-4)
    assert min(model.validation_curve) == model.validation_curve[model.best_iteration - 1]


def test_a_predictor_loaded_from_the_files_alone_scores_the_same(trained, tmp_path):
    model, dataset, _ = trained["binary"]
    artifacts = model.predictor.save(tmp_path)
    assert {name: path.name for name, path in artifacts.items()} == {
        "booster": "xgboost_model.json",
        "feature_spec": "feature_spec.json",
        "model_info": "model_info.json",
    }
    assert json.loads((tmp_path / "model_info.json").read_text())["family"] == "xgboost"
    assert model_family(tmp_path) == "xgboost"
    loaded = load_predictor(tmp_path)
    assert type(loaded) is XGBoostPredictor
    rows = read_split(dataset, "test")
    expected = model.predictor.predict(rows)
    pd.testing.assert_frame_equal(loaded.predict(rows), expected)
    assert list(expected.columns) == ["prediction", "probability"]
    assert expected["probability"].dtype == np.float64
    np.testing.assert_allclose(
        class_scores(loaded.predict(read_split(dataset, "validation")), "binary", dataset.classes),
        model.validation_scores,
        rtol=1e-6,
    )


def test_categorical_columns_are_xgboost_categoricals_and_unseen_values_are_missing(trained):
    model, dataset, _ = trained["binary"]
    booster = model.predictor.booster
    spec = dataset.feature_spec
    assert "merchant_category" in spec.categorical_features
    types = dict(zip(booster.feature_names, booster.feature_types, strict=True))
    assert {name for name, kind in types.items() if kind == "c"} == set(spec.categorical_features)
    trees = json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]
    assert any(tree["categories_nodes"] for tree in trees)  # splits on sets of categories
    importance = model.predictor.feature_importance().set_index("feature")
    assert list(importance.index) == sorted(importance.index, key=lambda f: -importance.gain[f])
    assert set(importance.index) == set(spec.feature_names)  # unused features get zeros
    assert importance.loc["merchant_category", "split"] > 0

    rows = read_split(dataset, "test").head(20)
    unseen = rows.assign(merchant_category="a merchant never seen in training")
    missing = rows.assign(merchant_category=None)
    pd.testing.assert_frame_equal(model.predictor.predict(unseen), model.predictor.predict(missing))


def test_each_task_predicts_the_pipeline_columns(trained):
    model, dataset, _ = trained["multiclass"]
    assert model.params["objective"] == "multi:softprob"
    assert model.params["num_class"] == len(dataset.classes) == 6
    assert model.validation_metric == "multi_logloss"
    assert model.validation_scores.shape == (dataset.row_counts["validation"], 6)
    predicted = model.predictor.predict(read_split(dataset, "test"))
    assert list(predicted.columns) == ["prediction", *[f"probability_{c}" for c in dataset.classes]]
    np.testing.assert_allclose(predicted.iloc[:, 1:].sum(axis=1), 1.0, rtol=1e-12)
    assert set(predicted["prediction"]) <= set(dataset.classes)

    model, dataset, _ = trained["regression"]
    assert (model.params["objective"], model.validation_metric) == ("reg:squarederror", "rmse")
    test = read_split(dataset, "test")
    predicted = model.predictor.predict(test)
    assert list(predicted.columns) == ["prediction"]
    truth = test[TARGET_COLUMN].to_numpy()
    assert np.sqrt(np.mean((predicted["prediction"] - truth) ** 2)) < 0.7 * truth.std()


def test_the_use_case_parameters_map_to_xgboost_parameters(trained):
    _, dataset, config = trained["binary"]
    training = config.training.model_copy(
        update={
            "learning_rate": 0.1,
            "num_leaves": 63,
            "max_bin": 127,
            "min_child_samples": 40,
            "feature_fraction": 0.8,
            "l2_regularization": 2.0,
            "seed": 7,
            "extra_params": {"max_cat_to_onehot": 4},
        }
    )
    params = xgboost_params(training, dataset)
    expected = {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        "grow_policy": "lossguide",
        "max_depth": 0,
        "max_leaves": 63,
        "eta": 0.1,
        "max_bin": 127,
        "colsample_bytree": 0.8,
        "lambda": 2.0,
        "seed": 7,
        "max_cat_to_onehot": 4,
    }
    assert params.items() >= expected.items()
    # min_child_samples rows hold this much hessian at the class balance boosting starts from
    q = dataset.meta_features.minority_class_fraction
    assert params["min_child_weight"] == pytest.approx(40 * q * (1 - q))
    balanced = training.model_copy(update={"class_weight": "balanced"})
    assert min_child_weight(balanced, dataset) == pytest.approx(40 * 0.25)
    _, regression, config = trained["regression"]
    assert min_child_weight(config.training, regression) == config.training.min_child_samples


def test_balanced_class_weights_are_lightgbms():
    counts = pd.Series({0: 90, 1: 10})
    np.testing.assert_allclose(balanced_weights(counts, 2), [100 / 180, 100 / 20])
    weighted = counts.to_numpy() * balanced_weights(counts, 2)
    assert weighted[0] == pytest.approx(weighted[1])  # each class weighs the same in total


def test_balanced_class_weights_train_a_model_that_flags_more_rows(trained, tmp_path):
    _, dataset, config = trained["binary"]
    train, validation = read_split(dataset, "train"), read_split(dataset, "validation")
    plain = family("xgboost").train_trial(train, validation, dataset, config.training, threads=1)
    balanced = config.training.model_copy(update={"class_weight": "balanced"})
    weighted = family("xgboost").train_trial(train, validation, dataset, balanced, threads=1)
    # Weighting the rare class up pulls the probabilities up: worse log-loss on the true rates.
    assert weighted.validation_loss > plain.validation_loss


def test_a_tuning_trial_in_one_process_matches_training_on_dask(trained):
    model, dataset, config = trained["binary"]
    result = family("xgboost").train_trial(
        read_split(dataset, "train"),
        read_split(dataset, "validation"),
        dataset,
        config.training,
        threads=1,
    )
    assert isinstance(result, TrialResult)
    assert result.wall_time_s > 0 and 1 <= result.best_iteration <= config.training.n_estimators
    best = model.validation_curve[model.best_iteration - 1]
    assert result.validation_loss == pytest.approx(best, rel=0.05)  # other sketches, same model


def test_the_cost_drivers_are_job_fields_and_the_job_is_xgboost(trained):
    from prefect_mlops.infra.allocator.history import JobFields
    from prefect_mlops.infra.allocator.profiling import job_features

    _, dataset, config = trained["binary"]
    drivers = family("xgboost").cost_drivers(config.training, dataset)
    assert set(drivers) <= set(JobFields.model_fields)
    job = job_features(dataset, config.training, family("xgboost"))
    assert job.family == "xgboost" and job.num_leaves == config.training.num_leaves


def test_a_gpu_allocation_on_a_cpu_build_warns_and_trains_on_the_cpu(caplog):
    training = TrainingConfig(family="xgboost")
    with caplog.at_level(logging.WARNING):
        assert family("xgboost").for_gpu(training) == training
    assert "no CUDA support: training on CPU" in caplog.text


def test_the_pyfunc_the_service_and_a_bundle_predict_with_the_family_predictor(trained, tmp_path):
    model, dataset, _ = trained["multiclass"]
    rows = read_split(dataset, "test").head(50)
    expected = model.predictor.predict(rows)
    artifacts = tmp_path / "version" / "artifacts"
    artifacts.mkdir(parents=True)
    files = model.predictor.save(artifacts)

    pyfunc = PipelinePyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={k: str(v) for k, v in files.items()}))
    assert type(pyfunc.predictor) is XGBoostPredictor
    pd.testing.assert_frame_equal(pyfunc.predict(None, rows), expected)

    served = ServedModel("m", "1", "run", read_pipeline_model(artifacts, "models:/m/1"))
    assert type(served.predictor) is XGBoostPredictor
    pd.testing.assert_frame_equal(served.predict(rows), expected)

    shutil.copytree(Path(mlops.__file__).parent, tmp_path / "version" / "code" / "mlops")
    (tmp_path / "version" / "requirements.txt").write_text("xgboost-cpu==3.2.0\nnumpy==2.0.0\n")
    bundle = _write_bundle(tmp_path / "version", tmp_path / "bundle", "xgb-model", "1", "run")
    assert bundle.requirements[:2] == ["xgboost-cpu==3.2.0", "numpy==2.0.0"]
    assert (tmp_path / "bundle" / bundle.package / "model" / "xgboost_model.json").is_file()
    sys.path.insert(0, str(tmp_path / "bundle"))
    try:
        exported = importlib.import_module(bundle.package).load()
    finally:
        sys.path.remove(str(tmp_path / "bundle"))
    assert type(exported.model).__module__ == f"{bundle.package}._mlops.families.xgboost.predictor"
    pd.testing.assert_frame_equal(exported.predict(rows), expected)


def test_the_logged_requirements_name_the_installed_distribution():
    from importlib.metadata import version

    from prefect_mlops.model_registry.registry import _requirements

    assert REQUIREMENTS == ("xgboost-cpu",)  # the lock's CPU build
    assert _requirements("xgboost")[0] == f"xgboost-cpu=={version('xgboost-cpu')}"
    assert set(FAMILIES) == {"lightgbm", "xgboost"}


def test_a_damaged_model_file_is_refused_in_a_child_naming_the_library(trained, tmp_path):
    from prefect_mlops.mlops.model_check import ModelCheckFailed, ModelCheckLimits, check_in_child

    model, dataset, _ = trained["binary"]
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    model.predictor.save(artifacts)
    example = read_split(dataset, "test").head(3)[dataset.feature_spec.input_columns]
    (tmp_path / "input_example.json").write_text(example.to_json(orient="split", index=False))
    assert check_in_child(tmp_path, "models:/m/1", ModelCheckLimits()) > 0
    booster = artifacts / "xgboost_model.json"
    booster.write_text(booster.read_text()[: booster.stat().st_size // 2])
    with pytest.raises(ModelCheckFailed, match=r"XGBoost cannot read xgboost_model\.json"):
        check_in_child(tmp_path, "models:/m/1", ModelCheckLimits())
