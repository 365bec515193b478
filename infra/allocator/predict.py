"""Predicting a job's time on every candidate shape with the predictor the history favours.

The predictors: the scaling curves of ``curves.py`` (the job's own, and its nearest other
jobs'), the boosting cost model with transfer from similar jobs (``model.py``, for jobs that
have its fields) and a size-only Ernest prior. Each is scored by leave-one-out on the history
(:func:`infra.allocator.curves.select_predictor`); a candidate gets the prediction of the best
scored predictor that can predict it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from .curves import CURVE_PREDICTORS, Curve, Score, build_curves, node_kind, select_predictor
from .history import ClusterShape, JobFeatures, RunProfile
from .model import FittedModel, fit_model, nearest_jobs, transfer_ratio

OWN_MARGIN = 0.25
"""How much lower another predictor's leave-one-out regret must be to join the job's own."""

PREFERENCE = (
    "same-job",
    "same-job-per-node",
    "cost",
    "neighbours",
    "neighbours-per-node",
    "prior",
)
"""Tie-break order, and the order used when the history has nothing to score them on."""


@dataclass(frozen=True)
class TimePrediction:
    """A shape's predicted time, the evidence behind it, and which predictor made it."""

    time_s: float
    support: float
    predictor: str


@dataclass
class TimePlan:
    """Predicted times of every candidate, and the predictors' leave-one-out scores."""

    times: dict[ClusterShape, TimePrediction]
    scores: list[Score]
    curves: list[Curve]

    @property
    def best(self) -> Score | None:
        """The predictor ranked first, if any was scored."""
        return self.scores[0] if self.scores else None


# ---------------------------------------------------------------- parametric predictors


def size_terms(size: float, shape: ClusterShape) -> np.ndarray:
    """Ernest's terms with the input size as the work: 1, size/threads, log(nodes), nodes."""
    return np.array([1.0, size / shape.threads, math.log(shape.workers), float(shape.workers)])


def fit_size_prior(runs: Sequence[RunProfile], kind: str | None) -> np.ndarray | None:
    """Ernest's form fitted on every successful run whose input size is known in ``kind``
    (bytes or rows), by non-negative least squares on relative error."""
    rows, targets = [], []
    for run in runs:
        size = run.job.size
        if size and run.job.size_kind == kind and run.status == "success" and run.total_time_s > 0:
            rows.append(size_terms(size, run.shape))
            targets.append(run.total_time_s)
    if len(rows) < 4:
        return None
    target = np.array(targets)
    weights = 1.0 / target
    coefficients, _ = nnls(np.array(rows) * weights[:, None], target * weights)
    return coefficients


def _cpu(shape: ClusterShape) -> ClusterShape:
    return shape.model_copy(update={"gpu": False})


def cost_model_times(
    job: JobFeatures,
    shapes: Sequence[ClusterShape],
    runs: Sequence[RunProfile],
    model: FittedModel,
    gpu_speedup: float,
) -> dict[ClusterShape, tuple[float, float]]:
    """The boosting cost model with transfer from the nearest jobs (LightGBM and XGBoost jobs)."""
    if not job.is_boosting:
        return {}
    neighbours = nearest_jobs(job, [r for r in runs if r.job.is_boosting])
    out = {}
    for shape in shapes:
        cpu = _cpu(shape)
        ratio, support = transfer_ratio(model, neighbours, cpu, "time")
        time = model.base_prediction(job, cpu).time_s * ratio
        out[shape] = (time / (gpu_speedup if shape.gpu else 1.0), support)
    return out


def prior_times(
    job: JobFeatures, shapes: Sequence[ClusterShape], coefficients: np.ndarray | None
) -> dict[ClusterShape, tuple[float, float]]:
    """The size-only Ernest prior (needs the job's input size and four sized runs)."""
    if coefficients is None or not job.size:
        return {}
    return {s: (max(float(size_terms(job.size, s) @ coefficients), 0.05), 0.0) for s in shapes}


# ---------------------------------------------------------------- the plan


_SCORES: dict[tuple, list[Score]] = {}
"""Leave-one-out rankings already computed (a planner asks once per machine type)."""


class _Predictors:
    """Every predictor over one history, also on the history less some held-out contexts."""

    def __init__(
        self,
        runs: Sequence[RunProfile],
        cores: int | None,
        gpu_speedup: float,
        model: FittedModel | None = None,
    ):
        self.runs = list(runs)
        self.cores = cores
        self.gpu_speedup = gpu_speedup
        self.model = model  # already fitted on all of ``runs``
        self._fits: dict[tuple, tuple[FittedModel, np.ndarray | None]] = {}

    def _fitted(
        self, held: frozenset, size_kind: str | None
    ) -> tuple[list[RunProfile], FittedModel, np.ndarray | None]:
        runs = [r for r in self.runs if r.context_key not in held] if held else self.runs
        key = (held, size_kind)
        if key not in self._fits:
            model = self.model if not held and self.model else fit_model(runs, self.cores)
            self._fits[key] = (model, fit_size_prior(runs, size_kind))
        return runs, *self._fits[key]

    def __call__(
        self,
        name: str,
        job: JobFeatures,
        shapes: list[ClusterShape],
        curves: list[Curve],
        held: set | frozenset = frozenset(),
    ) -> dict[ClusterShape, tuple[float, float]]:
        if name in CURVE_PREDICTORS:
            return CURVE_PREDICTORS[name](job, shapes, curves)
        runs, model, prior = self._fitted(frozenset(held), job.size_kind)
        if name == "cost":
            return cost_model_times(job, shapes, runs, model, self.gpu_speedup)
        return prior_times(job, shapes, prior)


def plan_times(
    job: JobFeatures,
    shapes: Sequence[ClusterShape],
    history: Sequence[RunProfile],
    price: Callable[[ClusterShape], float],
    *,
    cores: int | None,
    gpu_speedup: float,
    price_key: object = None,
    model: FittedModel | None = None,
) -> TimePlan:
    """Predict every shape's time with the predictors ranked by leave-one-out on ``history``.

    The ranking depends only on the history, the job's name and family, and the prices, so it
    is kept for the next call with the same (``price_key`` names the prices; None: not kept).
    ``model`` is the boosting cost model already fitted on ``history``, if there is one.
    """
    predictors = _Predictors(history, cores, gpu_speedup, model)
    curves = build_curves(history)
    own = any(c.program == job.program for c in curves)
    names = [
        n
        for n in PREFERENCE
        if (own or not n.startswith("same-job")) and (n != "cost" or job.is_boosting)
    ]
    key = (
        hash(tuple(r.run_id for r in history)),
        job.name,
        job.family,
        own,
        tuple(names),
        price_key,
        cores,
        round(gpu_speedup, 3),
    )
    scores = _SCORES.get(key)
    if scores is None:
        scores = select_predictor(names, job, curves, predictors, price, same_job=own)
        if price_key is not None:
            _SCORES[key] = scores
            while len(_SCORES) > 256:
                _SCORES.pop(next(iter(_SCORES)))
    scored = [s for s in scores if math.isfinite(s.mean_regret)]
    own_kinds = {c.kind for c in curves if c.program == job.program}
    mine = [s for s in shapes if node_kind(s) in own_kinds]
    others = [s for s in shapes if node_kind(s) not in own_kinds]
    times = blend(job, mine, curves, predictors, own_first(scored)[:1])
    times |= blend(job, others, curves, predictors, scored)
    fallbacks = [s.name for s in scored] + [n for n in names if n not in {s.name for s in scored}]
    if mine and not any(s.name.startswith("same-job") for s in scored):
        fallbacks = sorted(fallbacks, key=lambda n: not n.startswith("same-job"))
    for name in fallbacks:  # shapes the blended predictors could not time
        missing = [s for s in shapes if s not in times]
        if not missing:
            break
        for shape, (time, support) in predictors(name, job, missing, curves).items():
            times[shape] = TimePrediction(time, support, name)
    times |= measured_times(job, shapes, curves)
    for shape in shapes:  # nothing at all to go on (no history): a generic guess
        times.setdefault(shape, TimePrediction(_blind_guess(shape), 0.0, "none"))
    return TimePlan(times, scored, curves)


def own_first(scores: Sequence[Score]) -> list[Score]:
    """For shapes the job itself ran on: its own curves' predictors, and another predictor only
    where its leave-one-out regret beats theirs by :data:`OWN_MARGIN` (the job's own outcomes
    dominate)."""
    own = [s for s in scores if s.name.startswith("same-job")]
    if not own:
        return []
    bar = own[0].mean_regret - OWN_MARGIN
    return [s for s in scores if s.name.startswith("same-job") or s.mean_regret < bar]


def blend(
    job: JobFeatures,
    shapes: Sequence[ClusterShape],
    curves: list[Curve],
    predictors: _Predictors,
    scores: Sequence[Score],
) -> dict[ClusterShape, TimePrediction]:
    """Log times of the scored predictors that time every shape, weighted by how far behind
    the best their leave-one-out record is (:meth:`Score.weight`)."""
    if not scores:
        return {}
    logs: dict[ClusterShape, list[tuple[float, float, float]]] = {s: [] for s in shapes}
    for score in scores:
        timed = predictors(score.name, job, list(shapes), curves)
        if len(timed) < len(shapes):
            continue
        weight = score.weight(scores[0])
        for shape, (time, support) in timed.items():
            logs[shape].append((weight, math.log(time), support))
    blended = {}
    for shape, parts in logs.items():
        if parts:
            total = sum(w for w, _, _ in parts)
            time = math.exp(sum(w * x for w, x, _ in parts) / total)
            support = max(s for _, _, s in parts)
            blended[shape] = TimePrediction(time, support, scores[0].name)
    return blended


def measured_times(
    job: JobFeatures, shapes: Sequence[ClusterShape], curves: Sequence[Curve]
) -> dict[ClusterShape, TimePrediction]:
    """This very job and input, already run on the shape's kind of node: its measured curve,
    interpolated between the node counts it ran on, overrides every prediction."""
    out = {}
    for curve in curves:
        if job.program is None or curve.key != (job.program, job.context or ""):
            continue
        low, high = min(curve.times), max(curve.times)
        for shape in shapes:
            if node_kind(shape) == curve.kind and low <= shape.workers <= high:
                support = 10.0 if shape.workers in curve.times else 3.0
                out[shape] = TimePrediction(curve.time_at(shape.workers), support, "measured")
    return out


def _blind_guess(shape: ClusterShape) -> float:
    """No history and no size: assume near-linear scaling from 1 hour on one node."""
    return 3600.0 * shape.workers**-0.8
