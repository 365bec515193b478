"""Tuning in the train stage on real components: trials on a LocalCluster, MLflow child runs,
the trial store, and the warm start of the next search."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.train import train_flow
from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.infra.allocator.tuning_history import open_trial_store
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry.tracking import tracking_uri_for
from tests.integration.conftest import bundled_config

# TrainingConfig's names -> the names LightGBM's params (the train run's) give them
LIGHTGBM_NAMES = {
    "learning_rate": "learning_rate",
    "num_leaves": "num_leaves",
    "min_child_samples": "min_child_samples",
    "feature_fraction": "colsample_bytree",
    "l2_regularization": "reg_lambda",
}


def trial_runs(client: MlflowClient, train_run_id: str) -> list:
    experiment_id = client.get_run(train_run_id).info.experiment_id
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{train_run_id}'"
    )
    return sorted(runs, key=lambda run: int(run.data.params["trial.number"]))


def stored_trials():
    store = open_trial_store(get_settings())
    try:
        return store.trials()
    finally:
        store.close()


def test_a_search_logs_its_trials_and_trains_the_best_and_the_next_one_starts_there(fraud_file):
    config = bundled_config(
        "fraud_detection", fraud_file, n_estimators=60, tuning={"enabled": True, "trials": 3}
    )
    config = config.model_copy(update={"name": "fraud-tuned"})
    dataset = preprocess_flow(config)
    uri = tracking_uri_for(config)
    client = MlflowClient(uri, registry_uri=uri)

    first = train_flow(config, dataset)

    train_run = client.get_run(first.run_id)
    trials = trial_runs(client, first.run_id)
    assert [run.info.run_name for run in trials] == ["trial-1", "trial-2", "trial-3"]
    assert {run.data.tags["mlops.stage"] for run in trials} == {"tuning-trial"}
    assert trials[0].data.tags["mlops.trial.origin"] == "configured parameters"
    for run in trials:  # real times: each trial ran before the candidate's run was opened
        assert run.info.status == "FINISHED"
        assert run.info.start_time <= run.info.end_time <= train_run.info.start_time
    best = min(trials, key=lambda run: run.data.metrics["validation_log_loss"])
    params = train_run.data.params
    assert params["tuning.best_trial"] == best.data.params["trial.number"]
    assert params["tuning.trials"] == "3" and params["tuning.warm_started_trials"] == "0"
    for name, lightgbm_name in LIGHTGBM_NAMES.items():  # the candidate trained with them
        assert params[lightgbm_name] == best.data.params[name], name
        assert params[f"tuning.chosen.{name}"] == best.data.params[name]
    assert "tuning.plan" in train_run.data.tags

    kept = stored_trials()
    assert [(t.number, t.status, t.use_case) for t in kept] == [
        (1, "success", "fraud-tuned"),
        (2, "success", "fraud-tuned"),
        (3, "success", "fraud-tuned"),
    ]
    assert {t.dataset_version for t in kept} == {dataset.version}
    assert {t.meta.n_rows for t in kept} == {dataset.meta_features.n_rows}
    for stored, run in zip(kept, trials, strict=True):
        assert {k: str(v) for k, v in stored.params.items()} == {
            k: v for k, v in run.data.params.items() if not k.startswith("trial.")
        }
        assert stored.validation_loss == run.data.metrics["validation_log_loss"]

    second = train_flow(config, dataset)

    again = trial_runs(client, second.run_id)
    assert again[0].data.tags["mlops.trial.origin"].startswith("warm start: fraud-tuned@")
    assert {k: v for k, v in again[0].data.params.items() if not k.startswith("trial.")} == {
        k: v for k, v in best.data.params.items() if not k.startswith("trial.")
    }
    assert client.get_run(second.run_id).data.params["tuning.warm_started_trials"] == "1"
    assert len(stored_trials()) == 6


def two_workers() -> Allocation:
    """The allocation of a two-worker LocalCluster, as if the allocator had chosen it."""
    return Allocation(
        workers=2,
        threads_per_worker=1,
        memory_per_worker_bytes=int(1.5 * 2**30),
        gpu=False,
        predicted_wall_time_s=5.0,
        predicted_peak_memory_bytes=400 * 2**20,
        predicted_cost=10.0,
        confidence=0.1,
        confidence_label="low",
        objective="fixed by the test",
        rationale=["fixed by the test"],
    )


def test_trials_run_side_by_side_and_one_lightgbm_refuses_is_recorded_and_passed(fraud_file):
    # LightGBM refuses more than 131072 leaves: the trials drawn above that fail, the rest train
    # (on few bins and a capped histogram cache, so that so many leaves fit in memory)
    space = {"num_leaves": {"low": 65536, "high": 262144, "log": True}}
    config = bundled_config(
        "fraud_detection",
        fraud_file,
        n_estimators=10,
        max_bin=15,
        extra_params={"histogram_pool_size": 64},
        tuning={"enabled": True, "trials": 6, "space": space},
    ).model_copy(update={"name": "fraud-wide"})
    dataset = preprocess_flow(config)
    uri = tracking_uri_for(config)
    client = MlflowClient(uri, registry_uri=uri)

    result = train_flow(config, dataset, allocation=two_workers())

    train_run = client.get_run(result.run_id)
    assert train_run.data.tags["tuning.plan"].startswith("2 trials at a time, one per worker")
    trials = trial_runs(client, result.run_id)
    assert len(trials) == 6  # the search went on past the failures
    assert len({run.data.tags["mlops.trial.where"] for run in trials}) == 2
    failed = [run for run in trials if run.info.status == "FAILED"]
    assert failed and len(failed) < 6
    for run in failed:
        assert int(run.data.params["num_leaves"]) > 131072
        assert "num_leaves" in run.data.tags["mlops.error"]
        assert "validation_log_loss" not in run.data.metrics
    assert int(train_run.data.params["num_leaves"]) <= 131072  # a trial that trained won
    assert train_run.data.params["tuning.failed_trials"] == str(len(failed))
    statuses = [t.status for t in stored_trials()]
    assert statuses.count("failed") == len(failed) and statuses.count("success") == 6 - len(failed)


def test_with_parallel_never_each_trial_trains_on_the_whole_cluster(fraud_file):
    config = bundled_config(
        "fraud_detection",
        fraud_file,
        n_estimators=20,
        tuning={"enabled": True, "trials": 2, "parallel": "never"},
    ).model_copy(update={"name": "fraud-whole"})
    dataset = preprocess_flow(config)
    uri = tracking_uri_for(config)
    client = MlflowClient(uri, registry_uri=uri)

    result = train_flow(config, dataset, allocation=two_workers())

    train_run = client.get_run(result.run_id)
    assert "parallel is 'never'" in train_run.data.tags["tuning.plan"]
    trials = trial_runs(client, result.run_id)
    assert [run.data.tags["mlops.trial.where"] for run in trials] == ["cluster", "cluster"]
    assert [run.data.params["trial.threads"] for run in trials] == ["2", "2"]
    assert all(run.info.status == "FINISHED" for run in trials)
