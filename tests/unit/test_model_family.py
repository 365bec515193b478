"""The model-family contract, for LightGBM, end to end on a small dataset: train on a real Dask
cluster, write the model's files, load a predictor from those files alone, score the same; and
the MLflow pyfunc, the serving service and an exported bundle all predict through the family's
predictor class."""

from __future__ import annotations

import importlib
import json
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
from prefect_mlops.mlops.config import parse_config
from prefect_mlops.mlops.dataset import read_split
from prefect_mlops.mlops.families import (
    FAMILIES,
    Predictor,
    TrainedModel,
    family,
    load_predictor,
    model_family,
    predictor_module,
)
from prefect_mlops.mlops.families.lightgbm.predictor import LightGBMPredictor
from prefect_mlops.mlops.model_files import ModelFilesError, read_pipeline_model
from prefect_mlops.mlops.prediction import INFO_ARTIFACT, class_scores
from prefect_mlops.mlops.pyfunc import PipelinePyfunc
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.model_registry.export import _write_bundle
from prefect_mlops.serving.served_model import ServedModel
from prefect_mlops.tasks.preprocessing import build_dataset_version

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[TrainedModel, object]:
    """A small fraud model trained by the LightGBM family on a one-worker LocalCluster."""
    home = tmp_path_factory.mktemp("family")
    source = write_dataset("fraud", 3_000, home / "fraud.parquet", seed=3)
    raw = yaml.safe_load((CONFIGS / "fraud_detection.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"].update({"n_estimators": 25, "early_stopping_rounds": 5})
    config = parse_config(raw, origin="fraud_detection (test)")
    dataset = build_dataset_version(config, str(home / "store"), fingerprint_source(config.data))
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        model = family().train(client, dataset, config.training, str(home / "work"))
    return model, dataset


def test_the_trainer_returns_a_predictor_cut_to_its_best_round(trained):
    model, dataset = trained
    assert isinstance(model.predictor, Predictor)
    assert model.predictor.facts.family == "lightgbm"
    assert model.predictor.booster.current_iteration() == model.best_iteration
    assert model.validation_metric == "binary_logloss"
    assert len(model.validation_scores) == dataset.row_counts["validation"]
    assert model.params["objective"] == "binary"


def test_a_predictor_loaded_from_the_files_alone_scores_the_same(trained, tmp_path):
    model, dataset = trained
    artifacts = model.predictor.save(tmp_path)
    assert {name: path.name for name, path in artifacts.items()} == {
        "booster": "model.txt",
        "feature_spec": "feature_spec.json",
        "model_info": "model_info.json",
    }
    assert model_family(tmp_path) == "lightgbm"
    loaded = load_predictor(tmp_path)
    assert type(loaded) is LightGBMPredictor
    rows = read_split(dataset, "test")
    expected = model.predictor.predict(rows)
    pd.testing.assert_frame_equal(loaded.predict(rows), expected)
    assert list(expected.columns) == ["prediction", "probability"]
    validation = read_split(dataset, "validation")
    np.testing.assert_allclose(  # the scores the trainer handed on are the kept model's
        class_scores(loaded.predict(validation), dataset.task, dataset.classes),
        model.validation_scores,
        rtol=1e-6,
        atol=1e-9,
    )


def test_the_cost_drivers_are_job_fields_the_allocator_knows(trained):
    from prefect_mlops.infra.allocator.history import JobFields
    from prefect_mlops.infra.allocator.profiling import job_features

    _, dataset = trained
    training = parse_config(
        yaml.safe_load((CONFIGS / "fraud_detection.yaml").read_text()), origin="x"
    ).training
    drivers = family().cost_drivers(training, dataset)
    assert set(drivers) <= set(JobFields.model_fields)
    job = job_features(dataset, training, family())
    assert job.family == "lightgbm" and job.is_boosting
    assert job.n_estimators == training.n_estimators


def test_the_pyfunc_the_service_and_a_bundle_predict_with_the_family_predictor(trained, tmp_path):
    model, dataset = trained
    rows = read_split(dataset, "test").head(50)
    expected = model.predictor.predict(rows)
    artifacts = tmp_path / "version" / "artifacts"
    artifacts.mkdir(parents=True)
    files = model.predictor.save(artifacts)

    pyfunc = PipelinePyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={k: str(v) for k, v in files.items()}))
    assert type(pyfunc.predictor) is LightGBMPredictor
    pd.testing.assert_frame_equal(pyfunc.predict(None, rows), expected)

    served = ServedModel("m", "1", "run", read_pipeline_model(artifacts, "models:/m/1"))
    assert type(served.predictor) is LightGBMPredictor
    pd.testing.assert_frame_equal(served.predict(rows), expected)

    # A model's copy of the code as logged now (the xgboost test keeps the older code/mlops).
    shutil.copytree(
        Path(mlops.__file__).parent, tmp_path / "version" / "code" / "prefect_mlops" / "mlops"
    )
    bundle = _write_bundle(tmp_path / "version", tmp_path / "bundle", "m", "1", "run")
    copied = tmp_path / "bundle" / bundle.package / "_mlops" / "families" / "lightgbm"
    own = Path(predictor_module("lightgbm").__file__)
    assert (copied / "predictor.py").read_text() == own.read_text()
    sys.path.insert(0, str(tmp_path / "bundle"))
    try:
        exported = importlib.import_module(bundle.package).load()
    finally:
        sys.path.remove(str(tmp_path / "bundle"))
    assert type(exported.model).__qualname__ == "LightGBMPredictor"
    assert type(exported.model).__module__ == f"{bundle.package}._mlops.families.lightgbm.predictor"
    pd.testing.assert_frame_equal(exported.predict(rows), expected)


def test_files_without_the_family_model_file_are_not_a_pipeline_model(trained, tmp_path):
    model, _ = trained
    model.predictor.save(tmp_path)
    (tmp_path / "model.txt").unlink()
    with pytest.raises(ModelFilesError, match=r"not a pipeline model: it lacks \['model.txt'\]"):
        read_pipeline_model(tmp_path, "models:/m/1")


def test_an_unknown_family_is_named():
    with pytest.raises(KeyError, match="No model family 'catboost'; there are lightgbm, xgboost"):
        family("catboost")
    assert set(FAMILIES) == {"lightgbm", "xgboost"}
    assert INFO_ARTIFACT == "model_info"


def test_a_damaged_model_file_is_refused_in_a_child_naming_the_library(trained, tmp_path):
    from prefect_mlops.mlops.model_check import ModelCheckFailed, ModelCheckLimits, check_in_child

    model, dataset = trained
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    model.predictor.save(artifacts)
    example = read_split(dataset, "test").head(3)[dataset.feature_spec.input_columns]
    (tmp_path / "input_example.json").write_text(example.to_json(orient="split", index=False))
    assert check_in_child(tmp_path, "models:/m/1", ModelCheckLimits()) > 0
    booster = artifacts / "model.txt"
    booster.write_text(booster.read_text().replace("leaf_value=", "leaf_value=oops ", 1))
    with pytest.raises(ModelCheckFailed, match=r"crashed \(SIGABRT\); LightGBM said: Model format"):
        check_in_child(tmp_path, "models:/m/1", ModelCheckLimits())


def test_the_chosen_threshold_travels_with_the_files_and_labels_every_row(trained, tmp_path):
    from prefect_mlops.tasks.training import decide_threshold

    model, dataset = trained
    decided = decide_threshold(model, dataset.task, None)  # no section: the best F1
    threshold = decided.threshold.threshold
    assert decided.threshold.objective == "f1" and threshold < 0.5  # rare fraud: well below
    assert decided.predictor.facts.threshold == threshold
    decided.predictor.save(tmp_path)
    loaded = load_predictor(tmp_path)
    assert loaded.facts.threshold == threshold
    rows = read_split(dataset, "test")
    predicted = loaded.predict(rows)
    flagged = predicted["probability"] >= threshold
    expected = np.where(flagged, dataset.classes[1], dataset.classes[0])
    assert (predicted["prediction"].to_numpy() == expected).all()
    assert (flagged != (predicted["probability"] >= 0.5)).any()  # the threshold made a difference
    # the files of a model logged before thresholds existed label at 0.5
    info = tmp_path / "model_info.json"
    facts = json.loads(info.read_text())
    del facts["threshold"]
    info.write_text(json.dumps(facts))
    assert load_predictor(tmp_path).facts.threshold == 0.5


def test_other_tasks_keep_their_labels_and_a_predictor_without_facts_is_refused(trained):
    from prefect_mlops.mlops.families import with_threshold
    from prefect_mlops.tasks.training import decide_threshold

    model, _ = trained
    assert decide_threshold(model, "multiclass", None) is model
    with pytest.raises(TypeError, match="not a dataclass with a 'facts' field"):
        with_threshold(object(), 0.2)


def test_balanced_class_weight_trains_weighted(trained, tmp_path):
    """With 1.6% positives, weighting each class equally lifts the positives' probabilities:
    the model's probabilities are no longer the fraud rate, and its threshold moves up."""
    from prefect_mlops.tasks.training import decide_threshold

    model, dataset = trained
    raw = yaml.safe_load((CONFIGS / "fraud_detection.yaml").read_text())
    raw["data"]["source"] = "unused"
    raw["data"].pop("synthetic")
    raw["training"].update(
        {"n_estimators": 25, "early_stopping_rounds": 5, "class_weight": "balanced"}
    )
    training = parse_config(raw, origin="fraud_detection (test)").training
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        weighted = family().train(client, dataset, training, str(tmp_path / "work"))
    assert weighted.params["class_weight"] == "balanced"
    positives = weighted.validation_targets == 1
    unweighted_mean = model.validation_scores[positives].mean()
    assert weighted.validation_scores[positives].mean() > 2 * unweighted_mean
    assert weighted.validation_scores.mean() > 5 * dataset_rate(model.validation_targets)
    plain = decide_threshold(model, "binary", None).threshold.threshold
    assert decide_threshold(weighted, "binary", None).threshold.threshold > plain


def dataset_rate(targets: np.ndarray) -> float:
    return float((targets == 1).mean())
