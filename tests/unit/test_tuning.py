"""The search on its own: sampling inside the space, the warm start, failed trials, the budget.

Trials here are plain functions of the parameters (a known bowl-shaped loss), so each test
says what the search does with outcomes, not what LightGBM makes of a dataset.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from prefect_mlops.mlops.dataset import MetaFeatures
from prefect_mlops.mlops.training_config import SearchRange, TrainingConfig, TuningConfig
from prefect_mlops.mlops.tuning import (
    PastTrial,
    Search,
    TrialOutcome,
    run_in_turn,
    warm_start_configurations,
)
from prefect_mlops.mlops.tuning.search import CONFIGURED
from prefect_mlops.mlops.tuning.space import clip_to_space
from prefect_mlops.mlops.tuning.trial import timed_outcome

SPACE = {
    "learning_rate": SearchRange(low=0.01, high=0.3, log=True),
    "num_leaves": SearchRange(low=7.5, high=64.2, log=True),
    "min_child_samples": SearchRange(low=5, high=100),
    "feature_fraction": SearchRange(low=0.4, high=1.0),
}


def training(**tuning) -> TrainingConfig:
    return TrainingConfig(tuning=TuningConfig(enabled=True, space=SPACE, **tuning))


def outcome(loss: float | None, status: str = "success", wall: float = 1.0, threads: int = 1):
    now = datetime.now(UTC)
    return TrialOutcome(
        status=status,
        validation_loss=loss,
        wall_time_s=wall,
        threads=threads,
        started_at=now,
        ended_at=now,
    )


def bowl(config: TrainingConfig) -> TrialOutcome:
    """Least at learning_rate 0.1, 40 leaves; the other parameters barely matter."""
    loss = (config.learning_rate - 0.1) ** 2 * 100 + ((config.num_leaves - 40) / 40) ** 2
    return outcome(loss + config.min_child_samples * 1e-4)


def meta(rows: int, features: int, task: str = "binary", categorical: int = 0) -> MetaFeatures:
    return MetaFeatures(
        n_rows=rows,
        n_features=features,
        n_numeric=features - categorical,
        n_categorical=categorical,
        n_datetime=0,
        bytes_in_memory=rows * features * 8,
        max_cardinality=10 if categorical else 0,
        mean_cardinality=10.0 if categorical else 0.0,
        sparsity=0.0,
        task=task,
        n_classes=0 if task == "regression" else 2,
        minority_class_fraction=None if task == "regression" else 0.3,
    )


def past(name: str, the_meta: MetaFeatures, loss: float, family: str = "lightgbm", **params):
    values = {"learning_rate": 0.1, "num_leaves": 31, "min_child_samples": 20} | params
    return PastTrial(
        search_id=f"search-{name}",
        number=1,
        origin="search",
        use_case=name,
        dataset_version=f"v-{name}",
        family=family,
        meta=the_meta,
        params=values,
        status="success",
        validation_loss=loss,
        loss_name="log_loss",
        wall_time_s=1.0,
        cores=1,
    )


def test_every_trial_samples_inside_the_space_and_integers_stay_integers():
    result = run_in_turn(Search(training(trials=30)), bowl)

    assert len(result.trials) == 30
    for trial in result.trials:
        assert set(trial.params) == set(SPACE)
        assert 0.01 <= trial.params["learning_rate"] <= 0.3
        assert type(trial.params["num_leaves"]) is int and 8 <= trial.params["num_leaves"] <= 64
        assert type(trial.params["min_child_samples"]) is int
        assert 0.4 <= trial.params["feature_fraction"] <= 1.0
    assert result.best.validation_loss == min(t.validation_loss for t in result.trials)
    assert result.training.num_leaves == result.best.params["num_leaves"]
    assert result.training.learning_rate == result.best.params["learning_rate"]


def test_the_configured_parameters_are_the_first_trial_of_a_cold_search():
    result = run_in_turn(Search(training(trials=3)), bowl)

    first = result.trials[0]
    assert first.origin == CONFIGURED
    assert first.params == {
        "learning_rate": 0.05,
        "num_leaves": 31,
        "min_child_samples": 20,
        "feature_fraction": 1.0,
    }
    assert [t.origin for t in result.trials[1:]] == ["search", "search"]


def test_a_shorter_search_is_the_start_of_a_longer_one_with_the_same_seed():
    short = run_in_turn(Search(training(trials=5, seed=3)), bowl)
    long = run_in_turn(Search(training(trials=12, seed=3)), bowl)
    other = run_in_turn(Search(training(trials=5, seed=4)), bowl)

    assert [t.params for t in short.trials] == [t.params for t in long.trials[:5]]
    assert [t.params for t in other.trials][1:] != [t.params for t in short.trials][1:]


def test_the_search_finds_the_bowls_bottom_better_than_its_start():
    result = run_in_turn(Search(training(trials=40)), bowl)

    assert result.best.validation_loss < result.trials[0].validation_loss / 10
    assert abs(result.best.params["learning_rate"] - 0.1) < 0.05


def test_warm_start_takes_the_best_of_the_nearest_datasets_of_the_same_task_and_family():
    here = meta(20_000, 20)
    history = [
        past("near", meta(25_000, 20), 0.30, learning_rate=0.2),
        past("near", meta(25_000, 20), 0.20, learning_rate=0.15),  # its best
        past("nearish", meta(100_000, 30), 0.40, learning_rate=0.03),
        past("far", meta(5_000_000, 300, categorical=200), 0.10, learning_rate=0.011),
        past("regression", meta(20_000, 20, task="regression"), 0.5, learning_rate=0.25),
        past("xgboost", meta(20_000, 20), 0.1, family="xgboost", learning_rate=0.29),
    ]
    failed = past("broken", meta(20_000, 20), 0.01, learning_rate=0.299)
    history.append(failed.model_copy(update={"status": "out-of-memory"}))

    starts = warm_start_configurations(
        here, "lightgbm", history, 2, SPACE, {"feature_fraction": 0.8}
    )

    assert [s.use_case for s in starts] == ["near", "nearish"]
    assert starts[0].params["learning_rate"] == 0.15
    assert starts[0].distance < starts[1].distance
    assert starts[0].params["feature_fraction"] == 0.8  # not searched then: the fallback
    everything = warm_start_configurations(
        here, "lightgbm", history, 10, SPACE, {"feature_fraction": 1}
    )
    assert [s.use_case for s in everything] == ["near", "nearish", "far"]


def test_warm_start_configurations_are_clipped_into_the_space():
    history = [past("wide", meta(20_000, 20), 0.2, learning_rate=0.9, num_leaves=500)]

    [start] = warm_start_configurations(
        meta(20_000, 20), "lightgbm", history, 1, SPACE, {"feature_fraction": 2.0}
    )

    assert start.params == {
        "learning_rate": 0.3,
        "num_leaves": 64,
        "min_child_samples": 20,
        "feature_fraction": 1.0,
    }
    assert (
        clip_to_space(
            {"num_leaves": 7.6},
            SPACE,
            {"learning_rate": 0, "min_child_samples": 5.4, "feature_fraction": 0.5},
        )["num_leaves"]
        == 8
    )


def test_warm_starts_are_the_first_trials_then_the_configured_parameters():
    history = [
        past("a", meta(20_000, 20), 0.2, learning_rate=0.2, num_leaves=16),
        past("b", meta(40_000, 20), 0.2, learning_rate=0.02, num_leaves=60),
    ]
    starts = warm_start_configurations(
        meta(20_000, 20), "lightgbm", history, 5, SPACE, {"feature_fraction": 1.0}
    )

    result = run_in_turn(Search(training(trials=4), starts), bowl)

    assert [t.origin for t in result.trials] == [
        "warm start: a@v-a",
        "warm start: b@v-b",
        CONFIGURED,
        "search",
    ]
    assert result.trials[0].params == starts[0].params
    assert result.warm_started == 2


def test_a_failed_trial_is_recorded_and_the_search_goes_on():
    calls = []

    def second_runs_out_of_memory_fourth_fails(config: TrainingConfig) -> TrialOutcome:
        calls.append(config)

        def train():
            if len(calls) == 2:
                raise MemoryError("std::bad_alloc")
            if len(calls) == 4:
                raise ValueError("LightGBM says no")
            return bowl(config)

        return timed_outcome(train, threads=2)

    search = Search(training(trials=8))
    result = run_in_turn(search, second_runs_out_of_memory_fourth_fails)

    assert len(result.trials) == 8
    assert [t.status for t in result.trials[:5]] == [
        "success",
        "out-of-memory",
        "success",
        "failed",
        "success",
    ]
    oom, failed = result.trials[1], result.trials[3]
    assert oom.validation_loss is None and oom.error == "MemoryError: std::bad_alloc"
    assert failed.error == "ValueError: LightGBM says no" and failed.threads == 2
    assert result.failed == 2 and result.best.status == "success"
    assert [t.state.name for t in search.study.trials].count("FAIL") == 2


def test_a_loss_that_is_not_a_number_counts_as_a_failed_trial():
    search = Search(training(trials=2))
    pending = search.ask()

    record = search.tell(pending, outcome(float("nan")))

    assert record.status == "failed" and record.error == "validation loss is nan"
    assert search.study.trials[0].state.name == "FAIL"


def test_when_every_trial_fails_the_candidate_keeps_the_configured_parameters():
    config = training(trials=3)

    result = run_in_turn(Search(config), lambda c: outcome(None, status="out-of-memory"))

    assert result.best is None and result.failed == 3
    assert result.training == config


def test_the_search_stops_once_the_core_second_budget_is_spent():
    # every trial: 10 s on 2 threads = 20 core-s; a budget of 50 allows a third, not a fourth
    result = run_in_turn(
        Search(training(trials=20, budget_core_seconds=50)),
        lambda c: bowl(c).model_copy(update={"wall_time_s": 10.0, "threads": 2}),
    )

    assert len(result.trials) == 3
    assert result.stopped == "budget" and result.core_seconds == 60


def test_trials_stop_at_the_trial_count_when_the_budget_is_not_reached():
    result = run_in_turn(Search(training(trials=4, budget_core_seconds=1000)), bowl)

    assert len(result.trials) == 4 and result.stopped == "trials"


def test_configurations_judged_before_on_the_same_dataset_teach_the_sampler():
    known = [({"learning_rate": 0.1, "num_leaves": 40, "min_child_samples": 5}, 0.0005)] * 6
    known += [({"learning_rate": 0.01, "num_leaves": 8, "min_child_samples": 90}, 3.0)] * 6

    taught = run_in_turn(Search(training(trials=8), known=known), bowl)
    cold = run_in_turn(Search(training(trials=8)), bowl)

    assert len(taught.trials) == 8  # what it was taught is not a trial of its own
    searched = [t.validation_loss for t in taught.trials if t.origin == "search"]
    cold_searched = [t.validation_loss for t in cold.trials if t.origin == "search"]
    assert min(searched) < min(cold_searched)


def test_a_space_that_leaves_what_training_accepts_is_refused_naming_key_and_file():
    from prefect_mlops.mlops.config import parse_config
    from prefect_mlops.mlops.errors import ConfigError

    raw = {
        "name": "x",
        "data": {"source": "x.csv", "target": "y"},
        "model": {"name": "m"},
        "training": {"tuning": {"space": {"learning_rate": {"low": 0.1, "high": 2}}}},
    }
    with pytest.raises(ConfigError) as error:
        parse_config(raw, origin="configs/x.yaml")
    message = str(error.value)
    assert "configs/x.yaml" in message and "training.tuning.space" in message
    assert (
        "'learning_rate' ranges over [0.1, 2.0] but training.learning_rate must be at most 1"
        in message
    )
