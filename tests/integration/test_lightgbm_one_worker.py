"""LightGBM on a Dask cluster of one worker: one task reads the training split on that worker and
fits there. The model is the one ``lightgbm.dask`` trains on that worker, and the train stage
still measures the worker's memory and records the run in the allocator's history."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from distributed import Client, LocalCluster, get_task_stream

from prefect_mlops.infra.allocator.planner import Allocation
from prefect_mlops.mlops.config import ClusterConfig, TrainingConfig, parse_config
from prefect_mlops.mlops.dataset import DatasetRef, read_split
from prefect_mlops.mlops.families.lightgbm.training import (
    fit_data_parallel,
    lightgbm_params,
    read_validation_output,
    scores_from_raw,
    train_lightgbm_on_dask,
    validation_scorer,
)
from prefect_mlops.mlops.features import build_features
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.tasks.allocation import record_training_run
from prefect_mlops.tasks.preprocessing import build_dataset_version
from prefect_mlops.tasks.training import train_on_allocation
from tests.integration.test_allocation import recorded_runs

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
USE_CASES = {  # task -> bundled config, generator, and what the test changes in its data section
    "binary": ("fraud_detection", "fraud", {}),
    "multiclass": ("car_dealership", "car_dealership", {}),
    "regression": ("car_dealership", "car_dealership", {"target": "commute_km"}),
}


def one_part_dataset(task: str, folder: Path) -> DatasetRef:
    """A use case's dataset version from a source of one row group, so each split is one file
    and ``lightgbm.dask`` has one part to concatenate (with several, it takes them in an order
    of its own, which changes the rows LightGBM samples its bins from)."""
    name, generator, data = USE_CASES[task]
    source = write_dataset(generator, 9_000, folder / f"{task}.parquet", seed=3, chunk_rows=9_000)
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    raw["data"] |= {"source": str(source), "task": task, **data}
    raw["data"].pop("synthetic")
    if task == "regression":
        raw.pop("model_gate")  # its metric floors are classification metrics
    config = parse_config(raw, origin=f"{name} as a {task} test")
    return build_dataset_version(config, str(folder / "store"), fingerprint_source(config.data))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, DatasetRef]:
    folder = tmp_path_factory.mktemp("one-part-datasets")
    return {task: one_part_dataset(task, folder) for task in USE_CASES}


@pytest.fixture(scope="module")
def one_worker() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def training_config(patience: int, **params) -> TrainingConfig:
    """A quick training; column-wise histograms always, where LightGBM would time both ways on
    the first round and take the faster (under load, not the same one every run: the sums then
    differ in their last bits)."""
    cluster = ClusterConfig(n_workers=1, threads_per_worker=2, memory_limit="2GiB")
    return TrainingConfig(
        n_estimators=120,
        learning_rate=0.3,
        early_stopping_rounds=patience,
        seed=11,
        cluster=cluster,
        extra_params={"force_col_wise": True},
        **params,
    )


@pytest.mark.parametrize("patience", [0, 5])
@pytest.mark.parametrize(
    ("task", "params"),
    [
        ("binary", {"class_weight": "balanced", "feature_fraction": 0.8}),
        ("multiclass", {"l2_regularization": 1.0, "min_child_samples": 30}),
        ("regression", {"num_leaves": 15, "max_bin": 63}),
    ],
)
def test_one_worker_trains_the_model_lightgbm_dask_trains_there(
    datasets, one_worker, tmp_path, task, params, patience
):
    dataset, training = datasets[task], training_config(patience, **params)
    with get_task_stream(one_worker) as stream:
        trained = train_lightgbm_on_dask(one_worker, dataset, training, str(tmp_path / "work"))
    assert not any("_train_part" in str(t["key"]) for t in stream.data)  # not lightgbm.dask

    reference = fit_data_parallel(  # lightgbm.dask on the same worker, as every run did before
        one_worker,
        dataset,
        lightgbm_params(training, dataset),
        validation_scorer(dataset, training, str(tmp_path / "reference")),
        None,
    ).booster
    curve, labels, raw_scores = read_validation_output(str(tmp_path / "reference"))
    best = int(np.argmin(curve)) + 1 if patience else len(curve)

    assert trained.validation_curve == curve  # the same floats, round for round
    assert trained.best_iteration == best and trained.iterations_run == len(curve)
    if patience:
        assert len(curve) == best + patience < training.n_estimators  # it did stop early
    test_rows = build_features(read_split(dataset, "test"), dataset.feature_spec).to_numpy()
    assert np.array_equal(
        trained.predictor.booster.predict(test_rows),
        reference.predict(test_rows, num_iteration=best),
    )
    assert np.array_equal(trained.validation_targets, labels)
    assert np.array_equal(trained.validation_scores, scores_from_raw(task, raw_scores))


def one_worker_allocation() -> Allocation:
    return Allocation(
        workers=1,
        threads_per_worker=2,
        memory_per_worker_bytes=2 * 2**30,
        gpu=False,
        predicted_wall_time_s=5.0,
        predicted_peak_memory_bytes=2**28,
        predicted_cost=10.0,
        confidence=0.1,
        confidence_label="low",
        objective="one worker, for the test",
        rationale=["one worker, for the test"],
    )


def test_the_train_stage_measures_a_one_worker_run_and_records_it(datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    dataset = datasets["binary"]

    attempt = train_on_allocation(
        dataset, training_config(5), one_worker_allocation(), str(tmp_path / "work")
    )
    record_training_run.fn(attempt.profile)

    assert attempt.error is None and attempt.trained is not None
    (peak,) = attempt.trained.peak_worker_memory_bytes.values()  # the one worker's
    assert peak > 100 * 2**20  # a worker process that read and trained, not an empty one
    (run,) = recorded_runs()
    assert (run.status, run.workers, run.threads_per_worker) == ("success", 1, 2)
    assert run.iterations == attempt.trained.iterations_run
    assert run.peak_memory_bytes == peak
    curve = attempt.trained.validation_curve
    assert run.final_metric == curve[attempt.trained.best_iteration - 1]
    get_settings.cache_clear()
