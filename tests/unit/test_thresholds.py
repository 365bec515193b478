"""The decision threshold chosen on validation scores, per objective and on edge cases."""

import numpy as np
import pytest
from sklearn import metrics as skm

from prefect_mlops.mlops.thresholds import best_f1, choose_threshold, metrics_at, threshold_curve
from prefect_mlops.mlops.training_config import ThresholdConfig

# Ten rows: positives score mostly high, one positive hides among the negatives.
TARGETS = np.array([0, 0, 0, 0, 0, 1, 0, 1, 1, 1])
SCORES = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9])


def labels_at(threshold: float, scores: np.ndarray = SCORES) -> np.ndarray:
    """1 where a row's score is at least ``threshold``, as a model labels it."""
    return np.greater_equal(scores, threshold).astype(int)


def test_f1_objective_picks_the_best_f1_of_any_threshold():
    choice = choose_threshold(TARGETS, SCORES, None)  # no section: best F1
    brute = max(
        skm.f1_score(TARGETS, labels_at(t)) for t in np.r_[SCORES, 1.0]
    )  # every threshold that changes the labels
    assert choice.objective == "f1"
    assert choice.metrics["f1"] == pytest.approx(brute) == pytest.approx(8 / 9)
    # flags 0.4 and up, halfway between 0.4 and the next score down
    assert choice.threshold == pytest.approx(0.375)
    assert choice.metrics == pytest.approx(
        {"precision": 0.8, "recall": 1.0, "f1": 8 / 9, "positive_rate": 0.5}
    )


def test_tied_f1_goes_to_the_higher_threshold():
    targets = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.6, 0.5, 0.4, 0.1])
    # flagging 0.9 (1 TP) and flagging 0.4 and up (2 TP, 2 FP) both give F1 2/3
    choice = choose_threshold(targets, scores, None)
    assert choice.metrics["f1"] == pytest.approx(2 / 3)
    assert choice.threshold == pytest.approx(0.75)


def test_the_chosen_threshold_labels_rows_as_the_validation_metrics_say():
    choice = choose_threshold(TARGETS, SCORES, ThresholdConfig(objective="f1"))
    predicted = labels_at(choice.threshold)
    assert skm.f1_score(TARGETS, predicted) == pytest.approx(choice.metrics["f1"])
    assert skm.precision_score(TARGETS, predicted) == pytest.approx(choice.metrics["precision"])


def test_cost_objective_trades_false_alarms_for_misses():
    # A missed positive costs 10 false alarms: flag down to the hidden positive at 0.4.
    costly_misses = ThresholdConfig(objective="cost", false_negative_cost=10)
    choice = choose_threshold(TARGETS, SCORES, costly_misses)
    assert choice.threshold == pytest.approx(0.375)
    assert choice.metrics["recall"] == 1.0
    assert choice.metrics["cost"] == 1.0  # one false alarm (0.6), no miss
    # False alarms cost 10 misses: flag only what is surely positive.
    costly_alarms = ThresholdConfig(objective="cost", false_positive_cost=10)
    choice = choose_threshold(TARGETS, SCORES, costly_alarms)
    assert choice.threshold == pytest.approx(0.65)
    assert choice.metrics["precision"] == 1.0
    assert choice.metrics["cost"] == 1.0  # one miss (0.4), no false alarm


def test_cost_is_the_least_of_every_threshold():
    rng = np.random.default_rng(3)
    targets = (rng.random(2_000) < 0.05).astype(int)
    scores = np.clip(rng.normal(0.2 + 0.4 * targets, 0.15), 0, 1)
    config = ThresholdConfig(objective="cost", false_positive_cost=1, false_negative_cost=7)
    choice = choose_threshold(targets, scores, config)
    costs = [
        ((scores >= t) & (targets == 0)).sum() + 7 * ((scores < t) & (targets == 1)).sum()
        for t in np.r_[np.unique(scores), 1.01]
    ]
    assert choice.metrics["cost"] == min(costs)


def test_precision_at_recall_takes_the_best_precision_that_reaches_the_recall():
    config = ThresholdConfig(objective="precision_at_recall", min_recall=0.75)
    choice = choose_threshold(TARGETS, SCORES, config)
    assert choice.metrics["recall"] >= 0.75
    assert choice.metrics["precision"] == 1.0 and choice.note == ""
    full = choose_threshold(
        TARGETS, SCORES, ThresholdConfig(objective="precision_at_recall", min_recall=1.0)
    )
    assert full.metrics["recall"] == 1.0
    assert full.metrics["precision"] == pytest.approx(0.8)  # flags 0.4 and up: one false alarm


def test_precision_at_recall_says_so_when_only_flagging_every_row_reaches_it():
    targets = np.array([1, 0, 0, 1])
    scores = np.array([0.1, 0.5, 0.6, 0.9])  # one positive scores below every negative
    config = ThresholdConfig(objective="precision_at_recall", min_recall=1.0)
    choice = choose_threshold(targets, scores, config)
    assert choice.metrics["positive_rate"] == 1.0
    assert "only by flagging every negative validation row" in choice.note


def test_fixed_objective_keeps_its_value_and_reports_metrics_there():
    choice = choose_threshold(TARGETS, SCORES, ThresholdConfig(objective="fixed", value=0.65))
    assert choice.threshold == 0.65
    assert choice.metrics["precision"] == 1.0 and choice.metrics["recall"] == 0.75


@pytest.mark.parametrize("only", [0, 1])
@pytest.mark.parametrize("objective", ["f1", "cost"])
def test_one_class_only_keeps_one_half_and_says_why(only, objective):
    targets = np.full(6, only)
    choice = choose_threshold(
        targets, np.linspace(0.1, 0.9, 6), ThresholdConfig(objective=objective)
    )
    assert choice.threshold == 0.5
    assert ("no positive" if only == 0 else "no negative") in choice.note


def test_no_rows_keeps_one_half():
    choice = choose_threshold(np.array([]), np.array([]), None)
    assert choice.threshold == 0.5 and "no positive" in choice.note


def test_tied_scores_move_together():
    targets = np.array([1, 0, 1, 0, 0, 0])
    scores = np.array([0.7, 0.7, 0.7, 0.2, 0.2, 0.1])  # three rows tie at 0.7
    curve = threshold_curve(targets, scores)
    assert curve.true_positives.tolist() == [0, 2, 2, 2]
    assert curve.false_positives.tolist() == [0, 1, 3, 4]
    choice = choose_threshold(targets, scores, None)
    assert labels_at(choice.threshold, scores).tolist() == [1, 1, 1, 0, 0, 0]


def test_neighbouring_scores_too_close_to_halve_keep_their_labels():
    tiny = np.nextafter(0.3, 0)
    targets, scores = np.array([1, 0]), np.array([0.3, tiny])
    choice = choose_threshold(targets, scores, None)
    assert labels_at(choice.threshold, scores).tolist() == [1, 0]
    assert choice.metrics["f1"] == 1.0


def test_curve_counts_match_a_loop_over_every_threshold():
    rng = np.random.default_rng(7)
    targets = (rng.random(500) < 0.1).astype(int)
    scores = np.round(rng.random(500), 2)  # many ties
    curve = threshold_curve(targets, scores)
    for cut, tp, fp in zip(curve.cuts, curve.true_positives, curve.false_positives, strict=True):
        flagged = scores >= cut
        assert tp == (flagged & (targets == 1)).sum() and fp == (flagged & (targets == 0)).sum()


def test_best_f1_and_metrics_at_agree():
    f1, threshold = best_f1(TARGETS, SCORES)
    assert f1 == pytest.approx(metrics_at(TARGETS, SCORES, threshold)["f1"]) == pytest.approx(8 / 9)


def test_a_million_rows_are_chosen_quickly():
    import time

    rng = np.random.default_rng(0)
    targets = (rng.random(1_000_000) < 0.016).astype(int)
    scores = rng.random(1_000_000)
    started = time.perf_counter()
    choose_threshold(targets, scores, None)
    assert time.perf_counter() - started < 5  # one sort, not a loop over the thresholds
