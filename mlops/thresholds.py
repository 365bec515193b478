"""A binary model's decision threshold, chosen on the validation split.

A binary model scores each row with the probability of the positive (second) class; a row is
labelled positive when that probability is at least the model's decision threshold. At 0.5 a
model trained on rare positives (1.6% fraud) labels almost nothing positive; the threshold
chosen here on the validation split by the use case's objective (``training.threshold``) is
stored with the model version (:class:`mlops.prediction.ModelFacts`) and used wherever the
model labels rows.

Pure functions on numpy arrays; one sort per call, whatever the number of distinct scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, Field

from prefect_mlops.mlops.prediction import DEFAULT_THRESHOLD
from prefect_mlops.mlops.training_config import ThresholdConfig


class ThresholdChoice(BaseModel):
    """The decision threshold chosen for a model, and what it gives on the validation split."""

    objective: str = Field(description="f1, cost, precision_at_recall or fixed.")
    threshold: float = Field(description="A row is positive when its probability is at least this.")
    metrics: dict[str, float] = Field(
        description="On the validation split at the threshold: precision, recall, f1, "
        "positive_rate (and cost with objective cost)."
    )
    note: str = Field(default="", description="Why the choice fell back, or what to know about it.")

    def summary(self) -> str:
        """One line: the threshold, its objective, the validation metrics at it, the note."""
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in self.metrics.items())
        line = (
            f"{self.threshold:.4f} (objective {self.objective} on the validation split): {metrics}"
        )
        return f"{line}; {self.note}" if self.note else line


@dataclass(frozen=True)
class ThresholdCurve:
    """Counts at every candidate threshold, from the highest to the lowest.

    Candidate ``i`` labels positive the rows scoring at least ``cuts[i]``; the first candidate
    (``cuts[0]`` above every score) labels none. ``cuts`` lie halfway between neighbouring
    distinct scores, so a threshold holds its place for scores near those it was chosen on.
    """

    cuts: np.ndarray
    true_positives: np.ndarray
    false_positives: np.ndarray
    positives: int
    negatives: int

    @property
    def precision(self) -> np.ndarray:
        """Precision per candidate (1 where nothing is labelled positive: no false alarm)."""
        flagged = self.true_positives + self.false_positives
        return np.divide(self.true_positives, flagged, out=np.ones(len(flagged)), where=flagged > 0)

    @property
    def recall(self) -> np.ndarray:
        """Recall per candidate (0 without positive rows)."""
        return self.true_positives / self.positives if self.positives else np.zeros(len(self.cuts))

    @property
    def f1(self) -> np.ndarray:
        """F1 per candidate: 2 TP / (2 TP + FP + FN)."""
        denominator = self.true_positives + self.false_positives + self.positives
        return np.divide(
            2 * self.true_positives,
            denominator,
            out=np.zeros(len(self.cuts)),
            where=denominator > 0,
        )

    def cost(self, false_positive_cost: float, false_negative_cost: float) -> np.ndarray:
        """Total cost per candidate: FP cost x false positives + FN cost x false negatives."""
        missed = self.positives - self.true_positives
        return false_positive_cost * self.false_positives + false_negative_cost * missed


def threshold_curve(targets: np.ndarray, scores: np.ndarray) -> ThresholdCurve:
    """True and false positives at every threshold that changes the labels (one sort).

    Args:
        targets: 1 for the positive class, 0 for the negative.
        scores: Probability of the positive class, one per target.
    """
    truth = np.asarray(targets, dtype="float64") == 1
    scores = np.asarray(scores, dtype="float64")
    if not len(scores):
        none = np.zeros(1)
        return ThresholdCurve(np.ones(1), none, none, positives=0, negatives=0)
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], truth[order]
    last_of_each = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])  # ties go together
    distinct = ranked[last_of_each]
    true_positives = np.r_[0, np.cumsum(hits)[last_of_each]]
    false_positives = np.r_[0, last_of_each + 1 - true_positives[1:]]
    lower = np.r_[distinct[1:], min(distinct[-1], 0.0)]
    cuts = np.r_[max(np.nextafter(distinct[0], np.inf), 1.0), (distinct + lower) / 2]
    cuts[1:] = np.where(cuts[1:] > lower, cuts[1:], distinct)  # neighbours too close to halve
    return ThresholdCurve(
        cuts=cuts,
        true_positives=true_positives.astype("float64"),
        false_positives=false_positives.astype("float64"),
        positives=int(truth.sum()),
        negatives=int((~truth).sum()),
    )


def metrics_at(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall, F1 and the share of rows labelled positive at ``threshold``."""
    truth = np.asarray(targets, dtype="float64") == 1
    flagged = np.asarray(scores, dtype="float64") >= threshold
    true_positives = float((truth & flagged).sum())
    n_flagged, positives = float(flagged.sum()), float(truth.sum())
    return {
        "precision": true_positives / n_flagged if n_flagged else 0.0,
        "recall": true_positives / positives if positives else 0.0,
        "f1": 2 * true_positives / (n_flagged + positives) if n_flagged + positives else 0.0,
        "positive_rate": n_flagged / len(truth) if len(truth) else 0.0,
    }


def best_f1(targets: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The best F1 any threshold gives on these rows, and that threshold (the highest of ties)."""
    curve = threshold_curve(targets, scores)
    best = int(np.argmax(curve.f1))
    return float(curve.f1[best]), float(curve.cuts[best])


def choose_threshold(
    targets: np.ndarray, scores: np.ndarray, config: ThresholdConfig | None
) -> ThresholdChoice:
    """The decision threshold by the configured objective (best F1 when ``config`` is None).

    - ``f1``: the best F1; ties go to the higher threshold (fewer rows flagged).
    - ``cost``: the least ``false_positive_cost`` x FP + ``false_negative_cost`` x FN; ties
      go to the higher threshold.
    - ``precision_at_recall``: the best precision among thresholds whose recall is at least
      ``min_recall``; ties go to the higher recall. Labelling every row positive reaches any
      recall, so a choice always exists; when only flagging every negative row reaches it,
      the note says so.
    - ``fixed``: ``value``.

    With one class only (or no rows) nothing can be chosen: the threshold is ``value`` for
    ``fixed`` and 0.5 otherwise, and the note says why.

    Args:
        targets: 1 for the positive class, 0 for the negative (the validation split's).
        scores: The model's probability of the positive class on the same rows.
        config: The use case's ``training.threshold`` section.
    """
    config = config or ThresholdConfig()
    curve = threshold_curve(targets, scores)
    if config.objective == "fixed":
        return _choice(config, targets, scores, config.value)
    if curve.positives == 0 or curve.negatives == 0:
        only = "no positive" if curve.positives == 0 else "no negative"
        note = (
            f"the validation split has {only} rows: nothing to choose on, {DEFAULT_THRESHOLD} kept"
        )
        return _choice(config, targets, scores, DEFAULT_THRESHOLD, note)
    note = ""
    if config.objective == "f1":
        best = int(np.argmax(curve.f1))
    elif config.objective == "cost":
        best = int(np.argmin(curve.cost(config.false_positive_cost, config.false_negative_cost)))
    else:
        best, note = _best_precision_at_recall(curve, config.min_recall or 0.0)
    return _choice(config, targets, scores, float(curve.cuts[best]), note)


def _best_precision_at_recall(curve: ThresholdCurve, min_recall: float) -> tuple[int, str]:
    reaching = np.flatnonzero(curve.recall >= min_recall - 1e-12)
    precision = curve.precision[reaching]
    best = int(reaching[np.flatnonzero(precision == precision.max())[-1]])
    if curve.false_positives[best] == curve.negatives and curve.negatives > 0:
        return best, (
            f"recall {min_recall:g} is reached only by flagging every negative validation row "
            "too: at that recall the model does not tell the classes apart"
        )
    return best, ""


def _choice(
    config: ThresholdConfig,
    targets: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    note: str = "",
) -> ThresholdChoice:
    metrics = metrics_at(targets, scores, threshold)
    if config.objective == "cost":
        flagged = np.asarray(scores, dtype="float64") >= threshold
        truth = np.asarray(targets, dtype="float64") == 1
        metrics["cost"] = float(
            config.false_positive_cost * (flagged & ~truth).sum()
            + config.false_negative_cost * (truth & ~flagged).sum()
        )
    return ThresholdChoice(
        objective=config.objective, threshold=float(threshold), metrics=metrics, note=note
    )
