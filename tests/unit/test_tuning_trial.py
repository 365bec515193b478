"""LightGBM's tuning trial: in one process, the same loss and best round as the Dask training."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from distributed import Client, LocalCluster

from prefect_mlops.mlops.config import parse_config
from prefect_mlops.mlops.dataset import read_split
from prefect_mlops.mlops.errors import DataError
from prefect_mlops.mlops.families import family
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.mlops.tuning.trial import run_trial
from prefect_mlops.tasks.preprocessing import build_dataset_version

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def small_dataset(home: Path, generator: str, config_name: str):
    source = write_dataset(generator, 4_000, home / f"{generator}.parquet", seed=3)
    raw = yaml.safe_load((CONFIGS / f"{config_name}.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"].update({"n_estimators": 40, "early_stopping_rounds": 5})
    config = parse_config(raw, origin=f"{config_name} (test)")
    dataset = build_dataset_version(config, str(home / "store"), fingerprint_source(config.data))
    return config.training, dataset


@pytest.mark.parametrize(
    "generator,config_name", [("fraud", "fraud_detection"), ("car_dealership", "car_dealership")]
)
def test_a_trial_in_one_process_matches_the_dask_training(tmp_path, generator, config_name):
    training, dataset = small_dataset(tmp_path, generator, config_name)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        trained = family().train(client, dataset, training, str(tmp_path / "work"))

    outcome = run_trial("lightgbm", dataset, training, threads=1)

    assert outcome.status == "success", outcome.error
    assert outcome.best_iteration == trained.best_iteration
    assert outcome.validation_loss == pytest.approx(
        trained.validation_curve[trained.best_iteration - 1], rel=1e-9
    )
    assert outcome.threads == 1 and outcome.wall_time_s > 0
    assert outcome.started_at < outcome.ended_at


def test_a_trial_on_an_empty_split_fails_with_the_dataset_named(tmp_path):
    training, dataset = small_dataset(tmp_path, "fraud", "fraud_detection")
    train, validation = read_split(dataset, "train"), read_split(dataset, "validation")

    with pytest.raises(DataError, match=f"Dataset {dataset.version}: a tuning trial needs rows"):
        family().train_trial(train, validation.head(0), dataset, training, 1)
