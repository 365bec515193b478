"""Plots of a model: ROC, precision-recall, confusion, residuals, importance, learning curve.

Figures in, nothing written: the evaluation and training stages log them to their runs.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # plots are files, never windows

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn import metrics as skm

from prefect_mlops.mlops.config import TaskType
from prefect_mlops.mlops.thresholds import ThresholdChoice, threshold_curve


def evaluation_figures(
    task: TaskType,
    targets: np.ndarray,
    scores: np.ndarray,
    classes: list[str] | None,
    split: str,
    threshold: float = 0.5,
) -> dict[str, Figure]:
    """ROC, precision-recall and confusion matrix (classification) or residual plots (regression).

    A binary model's confusion matrix is at its decision ``threshold``.
    """
    if task == "regression":
        return {f"{split}_residuals": _residuals(targets, scores, split)}
    labels = targets.astype(int)
    figures = {
        f"{split}_confusion_matrix": _confusion(labels, scores, task, classes, split, threshold)
    }
    positives = (
        [(classes[1], labels == 1, scores)]
        if task == "binary"
        else [(c, labels == i, scores[:, i]) for i, c in enumerate(classes)]
    )
    positives = [p for p in positives if 0 < p[1].sum() < len(labels)]
    if positives:
        figures[f"{split}_roc_curve"] = _curves(positives, "roc", split)
        figures[f"{split}_precision_recall_curve"] = _curves(positives, "pr", split)
    return figures


def _thin(x: np.ndarray, y: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` evenly spaced points of a curve (a PR curve has one per distinct score)."""
    if len(x) <= points:
        return x, y
    keep = np.unique(np.linspace(0, len(x) - 1, points).astype(int))
    return x[keep], y[keep]


def _curves(positives: list[tuple[str, np.ndarray, np.ndarray]], kind: str, split: str) -> Figure:
    figure, axis = plt.subplots(figsize=(6, 5))
    for label, truth, score in positives:
        if kind == "roc":
            fpr, tpr, _ = skm.roc_curve(truth, score)
            axis.plot(*_thin(fpr, tpr), label=f"{label} (AUC {skm.auc(fpr, tpr):.3f})")
        else:
            precision, recall, _ = skm.precision_recall_curve(truth, score)
            ap = skm.average_precision_score(truth, score)
            axis.plot(*_thin(recall, precision), label=f"{label} (AP {ap:.3f})")
    if kind == "roc":
        axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        axis.set(
            xlabel="False positive rate", ylabel="True positive rate", title=f"ROC curve ({split})"
        )
    else:
        axis.set(xlabel="Recall", ylabel="Precision", title=f"Precision-recall curve ({split})")
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def _confusion(
    labels: np.ndarray,
    scores: np.ndarray,
    task: TaskType,
    classes: list[str],
    split: str,
    threshold: float,
) -> Figure:
    binary = task == "binary"
    predicted = (scores >= threshold).astype(int) if binary else scores.argmax(axis=1)
    matrix = skm.confusion_matrix(labels, predicted, labels=list(range(len(classes))))
    figure, axis = plt.subplots(figsize=(1.2 * len(classes) + 3, 1.0 * len(classes) + 2.5))
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis)
    axis.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    dark = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(
            col,
            row,
            f"{value:,}",
            ha="center",
            va="center",
            color="white" if value > dark else "black",
            fontsize=8,
        )
    title = f"Confusion matrix ({split}" + (f", threshold {threshold:.3g})" if binary else ")")
    axis.set(xlabel="Predicted", ylabel="Actual", title=title)
    figure.tight_layout()
    return figure


def _residuals(targets: np.ndarray, predictions: np.ndarray, split: str) -> Figure:
    residuals = targets - predictions
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(predictions, residuals, s=4, alpha=0.3)
    left.axhline(0, color="grey", linestyle="--", linewidth=1)
    left.set(
        xlabel="Predicted", ylabel="Actual - predicted", title=f"Residuals vs predicted ({split})"
    )
    right.hist(residuals, bins=60)
    right.set(xlabel="Residual", ylabel="Rows", title="Residual distribution")
    figure.tight_layout()
    return figure


def feature_importance_figure(importance: pd.DataFrame, top: int = 25) -> Figure:
    """Horizontal bar chart of the top features by gain."""
    shown = importance.head(top).iloc[::-1]
    figure, axis = plt.subplots(figsize=(7, 0.3 * len(shown) + 1.5))
    axis.barh(shown["feature"], shown["gain"])
    axis.set(xlabel="Total gain", title=f"Feature importance (top {len(shown)} by gain)")
    figure.tight_layout()
    return figure


def threshold_figure(targets: np.ndarray, scores: np.ndarray, choice: ThresholdChoice) -> Figure:
    """Precision, recall and F1 on the validation split against the decision threshold, with
    the chosen threshold and 0.5 marked."""
    curve = threshold_curve(targets, scores)
    cuts = np.clip(curve.cuts, 0, 1)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, values in (
        ("precision", curve.precision),
        ("recall", curve.recall),
        ("F1", curve.f1),
    ):
        axis.plot(*_thin(cuts[::-1], values[::-1]), label=name)
    axis.axvline(
        choice.threshold,
        color="tab:red",
        linestyle="--",
        label=f"chosen {choice.threshold:.3g} ({choice.objective})",
    )
    axis.axvline(0.5, color="grey", linestyle=":", linewidth=1, label="0.5")
    axis.set(
        xlabel="Decision threshold (positive when probability ≥ it)",
        ylabel="On the validation split",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="Choosing the decision threshold",
    )
    axis.legend(loc="best", fontsize=8)
    figure.tight_layout()
    return figure


def learning_curve_figure(curve: list[float], best_iteration: int, metric: str) -> Figure:
    """Validation loss per boosting round, with the kept round marked."""
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot(range(1, len(curve) + 1), curve)
    axis.axvline(
        best_iteration, color="tab:red", linestyle="--", label=f"best round {best_iteration}"
    )
    axis.set(xlabel="Boosting round", ylabel=f"validation {metric}", title="Learning curve")
    axis.legend()
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------- scoring a logged model
