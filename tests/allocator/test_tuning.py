"""The allocator's part in tuning: where trials run (side by side or on the whole cluster), and
the trial store on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from prefect_mlops.infra.allocator.allocation import Allocation
from prefect_mlops.infra.allocator.history import ClusterShape
from prefect_mlops.infra.allocator.trials import plan_trials
from prefect_mlops.infra.allocator.tuning_history import TrialStore
from prefect_mlops.mlops.dataset import MetaFeatures
from prefect_mlops.mlops.training_config import TrainingConfig, TuningConfig
from prefect_mlops.mlops.tuning import PastTrial, warm_start_configurations
from prefect_mlops.mlops.tuning.space import configured_params
from tests.allocator.test_allocator import PAST, history_of, job, measured, shape

GIB = 2**30
MIB = 2**20


def allocated(the_shape: ClusterShape) -> Allocation:
    return Allocation(
        **the_shape.model_dump(),
        predicted_wall_time_s=10.0,
        predicted_cost=10.0,
        confidence=0.5,
        confidence_label="medium",
        objective="test",
        rationale=[],
    )


def test_small_trials_run_side_by_side_when_more_workers_mostly_add_overhead():
    plan = plan_trials(
        job(30_000, 15), allocated(shape(2, 1, 2.0)), TuningConfig(), history_of(PAST), cores=2
    )

    assert (plan.mode, plan.slots, plan.threads_per_trial) == ("per-worker", 2, 1)
    assert plan.predicted_trial_time_s > 0
    assert plan.reason.startswith("2 trials at a time, one per worker, 1 thread each: ")
    assert "side by side is cheaper" in plan.reason


def test_trials_take_the_whole_cluster_when_one_worker_was_measured_far_slower():
    the_job = job(200_000, 30, name="slow-alone", context="v1")
    one, two = shape(1, 1, 2.0), shape(2, 1, 2.0)
    history = [
        measured(the_job, one, "slow-alone", dataset_version="v1", wall_time_s=100.0),
        measured(the_job, two, "slow-alone", dataset_version="v1", wall_time_s=10.0),
    ]

    plan = plan_trials(the_job, allocated(two), TuningConfig(), history, cores=2)

    assert (plan.mode, plan.slots, plan.threads_per_trial) == ("whole-cluster", 1, 2)
    assert "the whole cluster is cheaper" in plan.reason


def test_no_trial_goes_to_one_worker_that_would_run_out_of_memory():
    big = job(2_000_000, 20, bytes_in_memory=400 * MIB)

    plan = plan_trials(big, allocated(shape(2, 1, 1.0)), TuningConfig(), [], cores=2)

    assert plan.mode == "whole-cluster"
    assert "one worker would run out of memory" in plan.reason


@pytest.mark.parametrize(
    "tuning,the_shape,expected",
    [
        (TuningConfig(parallel="never"), shape(2, 1, 2.0), "training.tuning.parallel is 'never'"),
        (TuningConfig(), shape(2, 1, 2.0, gpu=True), "the cluster's GPU is not shared"),
        (TuningConfig(), shape(1, 2, 2.0), "the cluster has one worker"),
    ],
)
def test_the_plan_says_why_trials_run_one_at_a_time(tuning, the_shape, expected):
    plan = plan_trials(job(30_000, 15), allocated(the_shape), tuning, history_of(PAST), cores=2)

    assert plan.slots == 1 and expected in plan.reason
    if the_shape.workers == 1:
        assert plan.reason.startswith("one trial at a time on one worker (2 threads)")


def test_the_plan_says_how_many_trials_the_budget_buys():
    tuning = TuningConfig(trials=20, budget_core_seconds=50)

    plan = plan_trials(job(30_000, 15), allocated(shape(2, 1, 2.0)), tuning, history_of(PAST))

    expected = min(int(50 // plan.predicted_trial_core_s), 20)
    assert f"the budget of 50 core-s buys about {expected} of the 20 trials" in plan.reason


# ---------------------------------------------------------------- the trial store


def meta(rows: int, task: str = "binary") -> MetaFeatures:
    return MetaFeatures(
        n_rows=rows,
        n_features=12,
        n_numeric=10,
        n_categorical=2,
        n_datetime=1,
        bytes_in_memory=rows * 100,
        max_cardinality=40,
        mean_cardinality=12.5,
        sparsity=0.02,
        task=task,
        n_classes=0 if task == "regression" else 2,
        minority_class_fraction=None if task == "regression" else 0.015,
    )


def trial(number: int, use_case: str, rows: int, **fields) -> PastTrial:
    values = {
        "search_id": f"s-{use_case}",
        "number": number,
        "origin": "search",
        "use_case": use_case,
        "dataset_version": f"{use_case}-v1",
        "family": "lightgbm",
        "meta": meta(rows),
        "params": {"learning_rate": 0.05 * number, "num_leaves": 16 * number},
        "status": "success",
        "validation_loss": 0.3 / number,
        "loss_name": "log_loss",
        "best_iteration": 40,
        "wall_time_s": 1.5,
        "cores": 2,
    }
    return PastTrial(**(values | fields))


def test_trials_round_trip_through_the_store(database_url):
    store = TrialStore(database_url())
    try:
        kept = [
            trial(1, "fraud", 20_000),
            trial(
                2,
                "fraud",
                20_000,
                status="out-of-memory",
                validation_loss=None,
                best_iteration=None,
                error="Worker exceeded 95% memory budget",
            ),
            trial(1, "prices", 5_000, meta=meta(5_000, "regression"), loss_name="rmse"),
            trial(1, "churn", 9_000, family="xgboost"),
        ]
        assert store.add_all(kept) == 4

        back = store.trials()
        lightgbm_binary = store.trials(family="lightgbm", task="binary")
    finally:
        store.close()

    def comparable(t: PastTrial) -> dict:
        return t.model_dump(exclude={"recorded_at"})

    assert sorted(map(str, map(comparable, back))) == sorted(map(str, map(comparable, kept)))
    assert [(t.use_case, t.number) for t in lightgbm_binary] == [("fraud", 1), ("fraud", 2)]
    failed = next(t for t in back if t.status == "out-of-memory")
    assert failed.validation_loss is None and "memory budget" in failed.error
    assert type(next(t for t in back if t.use_case == "fraud").params["num_leaves"]) is int


def test_a_search_warm_starts_from_what_the_store_kept(tmp_path):
    store = TrialStore(f"sqlite:///{tmp_path / 'history.db'}")
    try:
        store.add_all([trial(n, "fraud", 20_000) for n in (1, 2, 3)])
        store.add_all([trial(n, "claims", 900_000) for n in (1, 2)])
        past = store.trials(family="lightgbm", task="binary")
    finally:
        store.close()
    training = TrainingConfig()

    starts = warm_start_configurations(
        meta(25_000), "lightgbm", past, 2, training.tuning.space, configured_params(training)
    )

    assert [s.use_case for s in starts] == ["fraud", "claims"]
    assert starts[0].params["num_leaves"] == 48
    assert starts[0].validation_loss == pytest.approx(0.1)
