"""The per-round validation scorer of LightGBM training scores several rounds with one
prediction; its curve, kept scores and stopping round are those of scoring each round alone."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.dataset import TARGET_COLUMN
from prefect_mlops.mlops.families.lightgbm.training import GlobalValidationScorer, validation_loss
from prefect_mlops.mlops.features import FeatureSpec, build_features

SPEC = FeatureSpec(
    numeric=["x1", "x2", "x3"],
    log_transform=[],
    datetime=[],
    datetime_parts=[],
    categorical={"colour": ["red", "green", "blue"]},
)
N_CLASSES = {"binary": 2, "multiclass": 3, "regression": 0}


def rows(task: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": np.where(rng.random(n) < 0.1, np.nan, rng.normal(size=n)),
            "x3": rng.integers(0, 5, n).astype(float),
            "colour": rng.choice(["red", "green", "blue", "grey"], n),
        }
    )
    signal = (
        frame["x1"] + 0.5 * frame["x2"].fillna(0) + (frame["colour"] == "red") + rng.normal(size=n)
    )
    if task == "regression":
        target = signal
    elif task == "binary":
        target = (signal > 0.8).astype(float)
    else:
        target = np.digitize(signal, [-0.5, 0.8]).astype(float)
    return frame.assign(**{TARGET_COLUMN: target})


def old_scoring(task: str, features: np.ndarray, labels: np.ndarray, curve: list[float]):
    """The scorer as it was: one prediction per round, the loss as the textbook writes it."""
    scores: dict[str, np.ndarray] = {}

    def loss(raw: np.ndarray) -> float:
        if task != "binary":
            return validation_loss(task, raw, labels)
        p = np.clip(1.0 / (1.0 + np.exp(-raw)), 1e-15, 1 - 1e-15)
        return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))

    def callback(env: lgb.callback.CallbackEnv) -> None:
        raw = env.model.predict(
            features, start_iteration=env.iteration, num_iteration=1, raw_score=True
        )
        scores["raw"] = scores["raw"] + raw if "raw" in scores else np.zeros_like(raw) + raw
        curve.append(loss(scores["raw"]))
        scores[len(curve)] = scores["raw"].copy()

    callback.order = -1000  # before the scorer (lightgbm gives it a negative order)
    return callback, scores


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("patience", [0, 4])
@pytest.mark.parametrize("boosting", ["gbdt", "dart"])
def test_scoring_rounds_together_gives_the_curve_of_scoring_each_alone(
    tmp_path, task, patience, boosting
):
    validation = rows(task, 1500, seed=2)
    validation.to_parquet(tmp_path / "validation.parquet")
    train = rows(task, 4000, seed=1)
    features = build_features(train, SPEC).to_numpy()
    valid_features = build_features(validation, SPEC).to_numpy()
    labels = validation[TARGET_COLUMN].to_numpy()
    objective = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}[task]
    params = {"objective": objective, "boosting": boosting, "learning_rate": 0.3, "verbose": -1}
    params |= {"num_class": 3} if task == "multiclass" else {}
    scorer = GlobalValidationScorer(
        str(tmp_path / "validation.parquet"), SPEC, task, N_CLASSES[task], patience, None
    )
    reference: list[float] = []
    old, old_scores = old_scoring(task, valid_features, labels, reference)
    booster = lgb.train(
        params,
        lgb.Dataset(features, train[TARGET_COLUMN], categorical_feature=[3]),
        num_boost_round=57,
        callbacks=[old, scorer],
    )

    assert scorer.curve == reference[: len(scorer.curve)]  # equal floats, not close ones
    best = int(np.argmin(scorer.curve))
    if patience:
        assert len(scorer.curve) == best + 1 + patience < 57  # stopped where the old one did
        assert booster.best_iteration == best + 1
        assert np.array_equal(scorer.kept_scores, old_scores[best + 1])
    else:
        assert len(scorer.curve) == 57
        assert np.array_equal(scorer.kept_scores, old_scores[57])
    assert np.array_equal(scorer.labels, labels)
