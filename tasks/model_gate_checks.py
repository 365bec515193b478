"""The model gate's checks: a candidate version against the current champion on the same rows.

A new model-gate check goes here: a function that returns :class:`~mlops.gates.GateCheck`
records, called from :func:`run_model_checks` when its ``model_gate`` setting is on (the
settings are ``ModelGateConfig`` in :mod:`mlops.config`).

Both models are loaded from their files in the tracking store, natively (never unpickled, and
checked in a separate process first, see :mod:`model_registry.loading`), and score the
candidate dataset's test split; scores already kept for that split (:mod:`mlops.scores`: the
candidate's by evaluation, the champion's by an earlier gate) are read instead. The checks, each configurable in ``model_gate`` (``null`` turns
one off): absolute floors on test metrics, no regression of the primary metric against the
champion beyond a tolerance, the same per value of configured categorical columns (slices), a
p95 single-row latency budget and a model-size budget. The gate's decision, that none failed,
is :mod:`tasks.model_gate`'s.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pydantic import BaseModel

from prefect_mlops.mlops.config import ModelGateConfig, TaskType
from prefect_mlops.mlops.dataset import (
    TARGET_COLUMN,
    DatasetRef,
    read_split,
    read_split_head,
    read_split_schema,
)
from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.gates import LOWER_IS_BETTER, GateCheck
from prefect_mlops.mlops.model_files import PipelineModel
from prefect_mlops.mlops.prediction import DEFAULT_THRESHOLD, class_scores
from prefect_mlops.mlops.scores import (
    ScoresRef,
    load_scores,
    save_scores,
    scores_ref,
    scoring_libraries,
)
from prefect_mlops.model_registry.loading import ModelStore
from prefect_mlops.model_registry.promotion import ChampionRef
from prefect_mlops.model_registry.registry import model_identity
from prefect_mlops.tasks.evaluation import (
    LABEL_METRICS,
    EvaluationResult,
    compute_metrics,
    primary_metric,
)

logger = logging.getLogger(__name__)

CHANCE_FLOORS: dict[str, dict[str, float]] = {
    "binary": {"roc_auc": 0.55},
    "multiclass": {"roc_auc": 0.55},
    "regression": {"r2": 0.0},
}
"""Floors when ``model_gate.metric_floors`` is unset: better than chance, nothing more."""

_WARMUP = 5


# ---------------------------------------------------------------- comparing numbers


def better_or_equal(metric: str, value: float, bound: float) -> bool:
    """Whether ``value`` is at least as good as ``bound`` for this metric's direction."""
    return value <= bound if metric in LOWER_IS_BETTER else value >= bound


def allowed_bound(metric: str, reference: float, tolerance: float) -> float:
    """The worst value allowed: ``tolerance`` (relative) worse than ``reference``."""
    slack = tolerance * abs(reference)
    return reference + slack if metric in LOWER_IS_BETTER else reference - slack


def _relation(metric: str) -> str:
    return "≤" if metric in LOWER_IS_BETTER else "≥"


def resolve_primary_metric(gate: ModelGateConfig, task: TaskType) -> str:
    """The configured primary metric, or the task's default."""
    return gate.primary_metric or primary_metric(task)


def check_metric_names(gate: ModelGateConfig, task: TaskType, available: set[str]) -> None:
    """Refuse metrics the task does not compute.

    Raises:
        ConfigError: naming the ``model_gate`` key and the metrics that are available.
    """
    wanted = {"model_gate.primary_metric": [resolve_primary_metric(gate, task)]}
    wanted["model_gate.metric_floors"] = list(gate.metric_floors or {})
    for key, metrics in wanted.items():
        unknown = [m for m in metrics if m not in available]
        if unknown:
            raise ConfigError(
                f"{key} names {unknown}, which {task} models do not report. "
                f"Available for {task}: {sorted(available)}."
            )


# ---------------------------------------------------------------- the checks


def floor_checks(metrics: dict[str, float], floors: dict[str, float]) -> list[GateCheck]:
    """One check per configured floor (a ceiling for lower-is-better metrics).

    A binary model's label metrics (``f1``, ``recall``...) are at its own decision threshold
    (``metrics["decision_threshold"]``), and the check says so.
    """
    checks = []
    threshold = metrics.get("decision_threshold")
    for metric, bound in floors.items():
        value = metrics.get(metric)
        passed = value is not None and np.isfinite(value) and better_or_equal(metric, value, bound)
        at = (
            f" at its decision threshold {threshold:.4g}"
            if threshold is not None and metric in LABEL_METRICS
            else ""
        )
        checks.append(
            GateCheck(
                gate="model",
                name=f"metric.{metric}.floor",
                description=f"test {metric}{at} {_relation(metric)} {bound:g}",
                value=value,
                threshold=f"{_relation(metric)} {bound:g}",
                verdict="pass" if passed else "fail",
                detail="" if value is not None else f"{metric} could not be computed",
            )
        )
    return checks


def no_regression_check(
    metric: str,
    candidate: float,
    champion: float | None,
    champion_version: str | None,
    tolerance: float,
) -> GateCheck:
    """The candidate's primary metric is not worse than the champion's beyond ``tolerance``."""
    description = f"test {metric} not worse than the champion's by more than {tolerance:.1%}"
    if champion is None:
        return GateCheck(
            gate="model",
            name=f"champion.{metric}.no_regression",
            description=description,
            value=candidate,
            verdict="skip",
            detail="no champion to compare with (this version would be the first)",
        )
    bound = allowed_bound(metric, champion, tolerance)
    return GateCheck(
        gate="model",
        name=f"champion.{metric}.no_regression",
        description=description,
        value=candidate,
        threshold=f"{_relation(metric)} {bound:.4f} (champion v{champion_version}: {champion:.4f})",
        verdict="pass" if better_or_equal(metric, candidate, bound) else "fail",
    )


def slice_checks(
    frame: pd.DataFrame,
    task: TaskType,
    candidate_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    gate: ModelGateConfig,
    metric: str,
    thresholds: tuple[float, float] = (DEFAULT_THRESHOLD, DEFAULT_THRESHOLD),
) -> list[GateCheck]:
    """Per value of each slice column: the candidate's metric vs the champion's on those rows,
    a binary model's labels at its own decision threshold (``thresholds``: the candidate's,
    the champion's).

    Slices smaller than ``slice_min_rows`` (or, for classification, with fewer than
    ``slice_min_class_rows`` rows of each class) are not judged: their metric is mostly noise.
    """
    targets = frame[TARGET_COLUMN].to_numpy(dtype="float64")
    checks: list[GateCheck] = []
    for column in gate.slices:
        if champion_scores is None:
            checks.append(_slice_skip(column, metric, "no champion to compare with"))
            continue
        values = frame[column].astype("string").fillna("(missing)")
        too_small = []
        for value in sorted(values.unique()):
            mask = (values == value).to_numpy()
            if not _judgeable(targets[mask], task, gate):
                too_small.append(str(value))
                continue
            checks.append(
                _slice_check(
                    column, str(value), metric, task, targets[mask],
                    (candidate_scores[mask], thresholds[0]),
                    (champion_scores[mask], thresholds[1]), gate.slice_max_regression,
                )
            )  # fmt: skip
        if too_small:
            shown = ", ".join(too_small[:10]) + (" …" if len(too_small) > 10 else "")
            checks.append(
                _slice_skip(
                    column, metric, f"{len(too_small)} slice(s) too small to judge: {shown}"
                )
            )
    return checks


def _judgeable(targets: np.ndarray, task: TaskType, gate: ModelGateConfig) -> bool:
    if len(targets) < gate.slice_min_rows:
        return False
    if task == "regression":
        return True
    counts = np.unique(targets, return_counts=True)[1]
    enough = int((counts >= gate.slice_min_class_rows).sum())
    return enough >= 2 if task == "multiclass" else len(counts) == 2 and enough == 2


def _slice_check(
    column: str,
    value: str,
    metric: str,
    task: TaskType,
    targets: np.ndarray,
    candidate_scores: tuple[np.ndarray, float],
    champion_scores: tuple[np.ndarray, float],
    tolerance: float,
) -> GateCheck:
    only = {metric}  # the one judged here
    candidate = compute_metrics(task, targets, *candidate_scores, only).get(metric, float("nan"))
    champion = compute_metrics(task, targets, *champion_scores, only).get(metric, float("nan"))
    bound = allowed_bound(metric, champion, tolerance)
    passed = bool(np.isfinite(candidate) and better_or_equal(metric, candidate, bound))
    return GateCheck(
        gate="model",
        name=f"slice.{column}={value}.{metric}",
        description=f"{metric} on {column}={value} ({len(targets):,} rows) not worse than champion's",
        value=candidate,
        threshold=f"{_relation(metric)} {bound:.4f} (champion {champion:.4f}, -{tolerance:.0%})",
        verdict="pass" if passed else "fail",
    )


def _slice_skip(column: str, metric: str, why: str) -> GateCheck:
    return GateCheck(
        gate="model",
        name=f"slice.{column}.{metric}",
        description=f"{metric} per value of {column} not worse than champion's",
        verdict="skip",
        detail=why,
    )


def single_row_latency_ms(model: PipelineModel, rows: pd.DataFrame, samples: int) -> np.ndarray:
    """Wall time of ``samples`` single-row predictions, in milliseconds (after a warm-up)."""
    picks = rows.iloc[np.arange(samples + _WARMUP) % len(rows)]
    timings = []
    for position in range(len(picks)):
        row = picks.iloc[[position]]
        started = time.perf_counter()
        model.predict(row)
        timings.append((time.perf_counter() - started) * 1000)
    return np.asarray(timings[_WARMUP:])


def latency_check(
    candidate_ms: np.ndarray, champion_ms: np.ndarray | None, budget_ms: float
) -> GateCheck:
    """p95 single-row predict time within budget."""
    p95 = float(np.percentile(candidate_ms, 95))
    detail = f"p50 {np.percentile(candidate_ms, 50):.2f} ms over {len(candidate_ms)} predictions"
    if champion_ms is not None:
        detail += f"; champion p95 {np.percentile(champion_ms, 95):.2f} ms"
    return GateCheck(
        gate="model",
        name="latency.p95_single_row",
        description="p95 single-row predict time within budget",
        value=p95,
        unit="ms",
        threshold=f"≤ {budget_ms:g} ms",
        verdict="pass" if p95 <= budget_ms else "fail",
        detail=detail,
    )


def size_check(size_bytes: int, budget_mb: float) -> GateCheck:
    """The logged model's files within the size budget."""
    size_mb = size_bytes / 2**20
    return GateCheck(
        gate="model",
        name="size.model_mb",
        description="model size within budget",
        value=size_mb,
        unit="MB",
        threshold=f"≤ {budget_mb:g} MB",
        verdict="pass" if size_mb <= budget_mb else "fail",
        detail="all files of the logged model (booster, feature spec, code)",
    )


# ---------------------------------------------------------------- loading and scoring


def score_rows(model: PipelineModel, frame: pd.DataFrame, dataset: DatasetRef) -> np.ndarray:
    """Class scores (or values) of a model on raw rows, in the dataset's class order.

    Raises:
        ValueError: if the model predicts other classes than the dataset has.
    """
    check_classes(model, dataset)
    predictions = model.predict(frame[dataset.feature_spec.input_columns])
    return class_scores(predictions, dataset.task, dataset.classes)


def check_classes(model: PipelineModel, dataset: DatasetRef) -> None:
    """Refuse a model that predicts other classes than the dataset has.

    Raises:
        ValueError: naming both.
    """
    classes = model.classes
    if dataset.task != "regression" and list(classes or []) != list(dataset.classes or []):
        raise ValueError(f"it predicts classes {classes}, the test split has {dataset.classes}")


def _check_slice_columns(gate: ModelGateConfig, columns: list[str]) -> None:
    absent = [c for c in gate.slices if c not in columns]
    if absent:
        raise ConfigError(
            f"model_gate.slices names {absent}, which are not columns of the test split. "
            f"Columns: {sorted(c for c in columns if c != TARGET_COLUMN)}."
        )


class Comparison(BaseModel):
    """The model gate's checks and the metrics behind them."""

    checks: list[GateCheck]
    primary_metric: str
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None = None


class Scored(BaseModel):
    """A loaded model and its scores on the test split (None when it could not score them)."""

    model_config = {"arbitrary_types_allowed": True}

    loaded: PipelineModel | None
    scores: np.ndarray | None
    problem: str | None = None
    known: dict[str, float] | None = None
    """Its metrics on these scores, when already computed (by evaluation)."""

    @property
    def threshold(self) -> float:
        """The model's decision threshold (what its binary labels are at)."""
        return self.loaded.predictor.facts.threshold if self.loaded else DEFAULT_THRESHOLD

    def metrics(self, task: TaskType, targets: np.ndarray) -> dict[str, float] | None:
        """Its test metrics, labels at its own decision threshold (None if it did not score)."""
        if self.scores is None:
            return None
        if self.known is not None:
            return dict(self.known)
        return compute_metrics(task, targets, self.scores, self.threshold)


@dataclass(frozen=True)
class Contender:
    """A loaded model, where its test-split scores are kept, and those scores if they were."""

    loaded: PipelineModel
    ref: ScoresRef
    kept: np.ndarray | None


def load_contender(store: ModelStore, model_uri: str, dataset: DatasetRef) -> Contender:
    """Load a model (checked in a child process first) and look up its kept test scores.

    Raises:
        ModelLoadError: when it cannot be loaded.
        ValueError: when it predicts other classes than the dataset has.
    """
    loaded = store.load(model_uri)
    check_classes(loaded, dataset)
    identity = model_identity(store.client, model_uri)
    ref = scores_ref(dataset, "test", identity, scoring_libraries(loaded))
    return Contender(loaded, ref, load_scores(ref))


def scores_of(contender: Contender, frame: pd.DataFrame, dataset: DatasetRef) -> Scored:
    """The contender's kept scores, or its scores on ``frame`` (then kept for the next gate)."""
    if contender.kept is not None:
        logger.info("Test scores of %s read from %s", contender.loaded.uri, contender.ref.uri)
        return Scored(loaded=contender.loaded, scores=contender.kept)
    scores = score_rows(contender.loaded, frame, dataset)
    try:
        save_scores(contender.ref, scores)
    except OSError as error:
        logger.warning("Test scores not kept at %s: %s", contender.ref.uri, error)
    return Scored(loaded=contender.loaded, scores=scores)


def load_champion(
    champion: ChampionRef | None, dataset: DatasetRef, store: ModelStore
) -> Contender | str | None:
    """The champion, ready to be scored; a failure is returned as its reason (the gate fails
    on it), not raised.

    Its files are checked in a separate process first: a corrupt champion must fail the
    comparison with a reason, not crash the gate (and so every later retraining).
    """
    if champion is None:
        return None
    try:
        return load_contender(store, champion.model_uri, dataset)
    except Exception as error:  # any load failure means: cannot compare
        return _champion_problem(champion, error)


def load_both(
    store: ModelStore, candidate_uri: str, champion: ChampionRef | None, dataset: DatasetRef
) -> tuple[Contender, Contender | str | None]:
    """The candidate (:func:`load_contender`) and the champion (:func:`load_champion`), loaded
    at the same time: each is checked in a child process of its own, and the two overlap.

    Raises:
        ModelLoadError: when the candidate cannot be loaded.
        ValueError: when the candidate predicts other classes than the dataset has.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-champion") as pool:
        rival = pool.submit(load_champion, champion, dataset, store)
        candidate = load_contender(store, candidate_uri, dataset)
    return candidate, rival.result()


def score_champion(
    champion: ChampionRef | None,
    rival: Contender | str | None,
    frame: pd.DataFrame,
    dataset: DatasetRef,
) -> Scored:
    """The champion's scores; a failure is recorded, not raised (the gate fails on it)."""
    if champion is None or rival is None:
        return Scored(loaded=None, scores=None)
    if isinstance(rival, str):
        return Scored(loaded=None, scores=None, problem=rival)
    try:
        return scores_of(rival, frame, dataset)
    except Exception as error:  # any predict failure means: cannot compare
        return Scored(loaded=None, scores=None, problem=_champion_problem(champion, error))


def _champion_problem(champion: ChampionRef, error: Exception) -> str:
    problem = f"champion version {champion.version} cannot score these rows: {error}"
    logger.warning(problem)
    return problem


def columns_to_read(gate: ModelGateConfig, dataset: DatasetRef, score: bool) -> list[str]:
    """The test-split columns the gate reads: the target, the slice columns, and the model's
    input columns when a model must be scored (its scores were not kept)."""
    inputs = dataset.feature_spec.input_columns if score else []
    return list(dict.fromkeys([TARGET_COLUMN, *gate.slices, *inputs]))


def run_model_checks(
    dataset: DatasetRef,
    candidate_uri: str,
    champion: ChampionRef | None,
    gate: ModelGateConfig,
    store: ModelStore,
    evaluation: EvaluationResult | None = None,
) -> Comparison:
    """Score candidate and champion on the dataset's test split and run every model check.

    Scores kept in the artifact store (:mod:`mlops.scores`: the candidate's by evaluation, the
    champion's by an earlier gate on this dataset version) are read instead of scoring again;
    the test split is read once, only the columns needed. A champion that cannot score these
    rows (other columns or classes) fails the no-regression check with the reason: the gate
    cannot show the candidate is not worse. The candidate's metrics are ``evaluation``'s when
    they were computed from the very scores read here.

    Raises:
        ConfigError: for metrics or slice columns the config names that do not exist.
    """
    _check_slice_columns(gate, read_split_schema(dataset, "test").names)
    metric = resolve_primary_metric(gate, dataset.task)
    candidate, rival = load_both(store, candidate_uri, champion if gate.enabled else None, dataset)
    unscored = [c for c in (candidate, rival) if isinstance(c, Contender) and c.kept is None]
    frame = read_split(dataset, "test", columns=columns_to_read(gate, dataset, bool(unscored)))
    targets = frame[TARGET_COLUMN].to_numpy(dtype="float64")
    scored = scores_of(candidate, frame, dataset)
    if candidate.kept is not None and evaluation is not None:  # the scores evaluation kept
        scored.known = evaluation.metrics_from(candidate.ref)
    metrics = scored.metrics(dataset.task, targets)
    check_metric_names(gate, dataset.task, set(metrics))
    if not gate.enabled:
        return Comparison(checks=[], primary_metric=metric, candidate_metrics=metrics)
    rival_scored = score_champion(champion, rival, frame, dataset)
    rival_metrics = rival_scored.metrics(dataset.task, targets)
    checks = floor_checks(metrics, gate.metric_floors or CHANCE_FLOORS[dataset.task])
    if gate.max_regression is not None:
        checks.append(
            _regression_or_problem(
                metric, metrics, champion, rival_metrics, gate, rival_scored.problem
            )
        )
    checks += slice_checks(
        frame,
        dataset.task,
        scored.scores,
        rival_scored.scores,
        gate,
        metric,
        (scored.threshold, rival_scored.threshold),
    )
    if gate.max_latency_p95_ms is not None:
        rows = _latency_rows(dataset, frame, gate.latency_samples + _WARMUP)
        checks.append(_latency(candidate.loaded, rival_scored, rows, gate))
    if gate.max_model_size_mb is not None:
        checks.append(size_check(candidate.loaded.size_bytes, gate.max_model_size_mb))
    return Comparison(
        checks=checks,
        primary_metric=metric,
        candidate_metrics=metrics,
        champion_metrics=rival_metrics,
    )


def _latency_rows(dataset: DatasetRef, frame: pd.DataFrame, count: int) -> pd.DataFrame:
    """The first ``count`` test rows' inputs: from ``frame`` when it holds them, else read."""
    inputs = dataset.feature_spec.input_columns
    if all(c in frame.columns for c in inputs):
        return frame[inputs].iloc[:count]
    return read_split_head(dataset, "test", inputs, count)


def _latency(
    candidate: PipelineModel, rival: Scored, rows: pd.DataFrame, gate: ModelGateConfig
) -> GateCheck:
    candidate_ms = single_row_latency_ms(candidate, rows, gate.latency_samples)
    champion_ms = (
        single_row_latency_ms(rival.loaded, rows, gate.latency_samples) if rival.loaded else None
    )
    return latency_check(candidate_ms, champion_ms, gate.max_latency_p95_ms or 0.0)


def _regression_or_problem(
    metric: str,
    metrics: dict[str, float],
    champion: ChampionRef | None,
    champion_metrics: dict[str, float] | None,
    gate: ModelGateConfig,
    problem: str | None,
) -> GateCheck:
    if problem is not None:
        return GateCheck(
            gate="model",
            name=f"champion.{metric}.no_regression",
            description=f"test {metric} not worse than the champion's",
            value=metrics.get(metric),
            verdict="fail",
            detail=problem,
        )
    return no_regression_check(
        metric,
        metrics[metric],
        champion_metrics[metric] if champion_metrics else None,
        champion.version if champion else None,
        gate.max_regression or 0.0,
    )
