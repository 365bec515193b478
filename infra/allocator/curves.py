"""Scaling curves: a job's time on a cluster shape, predicted from measured runs of jobs like it.

A *curve* is what one job in one context (one input) measured on one kind of node (a machine
type, or a worker size on a local cluster) over node counts. Several predictors read curves:

``same-job``
    The job's own curves from its other contexts (inputs), at the same node count, scaled by
    input size. Keeps a curve's shape as measured, memory cliffs included.
``same-job-per-node``
    The same curves, compared at the same input per node: a job with twice the input on twice
    the nodes takes as long. Moves a memory cliff with the input size.
``neighbours`` / ``neighbours-per-node``
    The nearest other jobs' curves (family, input size), their shape averaged in log time,
    their level scaled by input size.

:func:`select_predictor` picks between these and the parametric models of ``model.py`` by
their leave-one-out error on the history itself (hold out one context of a job, or a whole
job, predict it from the rest, and measure the regret of the pick), per job family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .history import ClusterShape, JobFeatures, RunProfile, program

NodeKind = tuple[str | None, int, bool]
"""What a node is, all but how many: machine type, threads per worker, GPU."""

DEFAULT_SLOPE = -0.8
"""log-time per log-nodes assumed when a curve has one point (a little under linear scaling)."""
SLOPE_LIMITS = (-1.5, 1.0)
"""Extrapolating past a curve's ends keeps its end slope within these bounds."""
NEIGHBOURS = 4
REGRET_SCALE = 0.05
ERROR_SCALE = 0.1
MIN_PROBLEMS = 3
"""Fewer held-out problems than this rank nothing: the preference order stands."""
MIN_TIME_S = 0.01
"""Times are read in log space: a run logged as 0 s counts as this."""
FAILED = ("failed", "killed", "timeout")
"""Outcomes a curve counts as a failed attempt that must be run again."""


def node_kind(shape: ClusterShape) -> NodeKind:
    """The kind of node of a shape (its machine type, threads per worker and GPU)."""
    return shape.machine_type, shape.threads_per_worker, shape.gpu


@dataclass
class Curve:
    """One job-context's measured times on one kind of node, by node count."""

    job: str
    context: str
    family: str | None
    size: float | None
    size_kind: str | None
    kind: NodeKind
    times: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    boosting: JobFeatures | None = None

    @property
    def program(self) -> str:
        """The job with its family (:func:`~infra.allocator.history.program`)."""
        return program(self.job, self.family)

    @property
    def key(self) -> tuple[str, str]:
        return self.program, self.context

    def time_at(self, nodes: float) -> float | None:
        """Time at ``nodes``, interpolated in log-log between measured counts, or None."""
        if not self.times:
            return None
        xs = np.log(np.array(sorted(self.times), dtype=float))
        ys = np.log(np.array([self.times[n] for n in sorted(self.times)]))
        x = math.log(nodes)
        if len(xs) == 1:
            return float(math.exp(ys[0] + DEFAULT_SLOPE * (x - xs[0])))
        if xs[0] <= x <= xs[-1]:
            return float(math.exp(np.interp(x, xs, ys)))
        end = 0 if x < xs[0] else -2
        slope = (ys[end + 1] - ys[end]) / (xs[end + 1] - xs[end])
        slope = min(max(slope, SLOPE_LIMITS[0]), SLOPE_LIMITS[1])
        anchor = 0 if x < xs[0] else -1
        return float(math.exp(ys[anchor] + slope * (x - xs[anchor])))


def build_curves(runs: Sequence[RunProfile]) -> list[Curve]:
    """Group runs into curves: the median time where a shape was measured more than once.

    A run that failed, was killed or timed out is a point too, at what it cost: its own time
    plus a re-run on the curve's cheapest node count (the time that re-run adds, spread over
    this count's nodes). Out-of-memory runs are left to the memory rules.
    """
    grouped: dict[tuple, Curve] = {}
    samples: dict[tuple, dict[int, list[float]]] = {}
    failures: dict[tuple, dict[int, list[float]]] = {}
    for run in runs:
        key = (*run.context_key, node_kind(run.shape))
        if key not in grouped:
            job = run.job
            grouped[key] = Curve(
                job=run.use_case,
                context=run.dataset_version or "",
                family=run.family,
                size=job.size,
                size_kind=job.size_kind,
                kind=node_kind(run.shape),
                boosting=job if job.is_boosting else None,
            )
            samples[key], failures[key] = {}, {}
        curve = grouped[key]
        if curve.size is None and run.job.size:  # a failed run may not have recorded it
            curve.size, curve.size_kind = run.job.size, run.job.size_kind
        if run.status == "success":
            samples[key].setdefault(run.workers, []).append(max(run.total_time_s, MIN_TIME_S))
        elif run.status in FAILED:
            failures[key].setdefault(run.workers, []).append(max(run.total_time_s, MIN_TIME_S))
            grouped[key].failed.add(run.workers)
    for key, curve in grouped.items():
        curve.times = {n: float(np.median(t)) for n, t in samples[key].items()}
        curve.failed -= set(curve.times)
        cheapest = min((t * n for n, t in curve.times.items()), default=None)
        for n in curve.failed:
            spent = float(np.median(failures[key][n]))
            curve.times[n] = spent + (cheapest / n if cheapest else spent)
    return [c for c in grouped.values() if c.times]


# ---------------------------------------------------------------- predictors


Predictor = Callable[[JobFeatures, Sequence[ClusterShape], Sequence[Curve]], dict]
"""(job, candidate shapes, curves of the history) -> {shape: (time, support)} for those it can."""


def _comparable(job: JobFeatures, curve: Curve) -> bool:
    """Both sizes known, and of the same kind (bytes with bytes, rows with rows)."""
    return bool(job.size and curve.size and job.size_kind == curve.size_kind)


def _size_ratio(job: JobFeatures, curve: Curve) -> float:
    return job.size / curve.size if _comparable(job, curve) else 1.0


def _closeness(job: JobFeatures, curve: Curve) -> float:
    """Weight of a curve of the same job: contexts of a similar input size count more."""
    return math.exp(-abs(math.log(_size_ratio(job, curve))))


def _own_curves(job: JobFeatures, curves: Sequence[Curve]) -> list[Curve]:
    return [c for c in curves if job.program is not None and c.program == job.program]


def _same_job(per_node: bool) -> Predictor:
    def predict(job, shapes, curves):
        own = _own_curves(job, curves)
        out = {}
        for shape in shapes:
            mine = [c for c in own if c.kind == node_kind(shape)]
            if not mine:
                continue
            if per_node:
                timed = [(c.time_at(shape.workers / _size_ratio(job, c)), c) for c in mine]
            else:
                timed = _across_sizes(job, shape.workers, mine)
            logs = [math.log(time) for time, _ in timed]
            weights = [_closeness(job, c) for _, c in timed]
            out[shape] = (math.exp(np.average(logs, weights=weights)), sum(weights))
        return out

    return predict


SIZE_SLOPES = (0.0, 1.5)
"""Time grows with input size at least not at all and at most this fast (log-log)."""


def _across_sizes(job: JobFeatures, nodes: int, mine: list[Curve]) -> list[tuple[float, Curve]]:
    """The job's time at ``nodes`` from its other contexts: read off the line through their
    times in log size where two sizes or more are known, else scaled in proportion."""
    sized = sorted((c for c in mine if _comparable(job, c)), key=lambda c: c.size)
    if len({c.size for c in sized}) >= 2:
        xs = np.log([c.size for c in sized])
        ys = np.log([c.time_at(nodes) for c in sized])
        x = math.log(job.size)
        if xs[0] <= x <= xs[-1]:
            y = float(np.interp(x, xs, ys))
        else:
            end = 0 if x < xs[0] else -2
            slope = (ys[end + 1] - ys[end]) / max(xs[end + 1] - xs[end], 1e-9)
            slope = min(max(slope, SIZE_SLOPES[0]), SIZE_SLOPES[1])
            anchor = 0 if x < xs[0] else -1
            y = ys[anchor] + slope * (x - xs[anchor])
        nearest = min(sized, key=lambda c: abs(math.log(job.size / c.size)))
        return [(math.exp(y), nearest)]
    return [(c.time_at(nodes) * _size_ratio(job, c), c) for c in mine]


def job_gap(job: JobFeatures, curve: Curve) -> float:
    """How unlike a job another job's curve is: family, then input size (log10)."""
    from .model import job_distance

    if job.is_boosting and curve.boosting is not None:
        return job_distance(job, curve.boosting)
    family = 0.0 if job.family == curve.family else 1.0
    size = abs(math.log10(_size_ratio(job, curve))) if _comparable(job, curve) else 0.5
    return family + size


def _neighbours(per_node: bool) -> Predictor:
    def predict(job, shapes, curves):
        others = [c for c in curves if c.program != job.program]
        out = {}
        for kind in {node_kind(s) for s in shapes}:
            near = sorted((c for c in others if c.kind == kind), key=lambda c: job_gap(job, c))
            near = near[:NEIGHBOURS]
            if not near:
                continue
            weights = np.array([1.0 / (0.1 + job_gap(job, c)) for c in near])
            mine = [s for s in shapes if node_kind(s) == kind]
            times = np.array(  # [neighbour, shape]: each neighbour's curve read for this job
                [
                    [
                        curve.time_at(
                            s.workers / _size_ratio(job, curve) if per_node else s.workers
                        )
                        * _size_ratio(job, curve)
                        for s in mine
                    ]
                    for curve in near
                ]
            )
            for shape, time in zip(mine, _expected_regret_times(times, mine, weights), strict=True):
                out[shape] = (float(time), float(weights.sum()) / 10)
        return out

    return predict


def _expected_regret_times(
    times: np.ndarray, shapes: Sequence[ClusterShape], weights: np.ndarray
) -> np.ndarray:
    """Times whose node-seconds rank the shapes by their expected regret over the neighbours.

    Each neighbour says how much dearer each shape is than its own cheapest; averaging those
    ratios (not their logs) makes a shape that was a disaster for one neighbour (a memory
    cliff, a failure) rank as the risk it is. The level stays the neighbours' geometric mean.
    """
    nodes = np.array([s.workers for s in shapes], dtype=float)
    cost = times * nodes
    regret = cost / cost.min(axis=1, keepdims=True)
    expected = weights @ regret / weights.sum()
    level = np.exp(weights @ np.log(times) / weights.sum())
    shaped = expected / nodes
    return shaped * np.exp(np.mean(np.log(level) - np.log(shaped)))


CURVE_PREDICTORS: dict[str, Predictor] = {
    "same-job": _same_job(per_node=False),
    "same-job-per-node": _same_job(per_node=True),
    "neighbours": _neighbours(per_node=False),
    "neighbours-per-node": _neighbours(per_node=True),
}


# ---------------------------------------------------------------- leave-one-out selection


@dataclass(frozen=True)
class Score:
    """A predictor's leave-one-out record on the history."""

    name: str
    mean_regret: float
    log_error: float
    problems: int

    def weight(self, best: Score) -> float:
        """This predictor's weight in a blend led by ``best``: down by e for every
        :data:`REGRET_SCALE` of extra mean regret and every :data:`ERROR_SCALE` of extra time
        error (which decides between kinds of node, and when every pick was right)."""
        extra_regret = max(self.mean_regret - best.mean_regret, 0.0)
        extra_error = max(self.log_error - best.log_error, 0.0)
        return math.exp(-extra_regret / REGRET_SCALE - extra_error / ERROR_SCALE)


PriceFn = Callable[[ClusterShape], float]
"""Price of a shape per second."""
ProblemPredictor = Callable[[str, JobFeatures, list[ClusterShape], list[Curve], set], dict]
"""(predictor name, job, shapes, curves without the held-out ones, held-out keys) -> predictions."""


def held_out_problems(
    curves: Sequence[Curve], job: JobFeatures, same_job: bool
) -> list[tuple[JobFeatures, set[tuple[str, str]], list[Curve]]]:
    """The history's own problems like this one: a context of a job whose other contexts are
    known (``same_job``), or a whole job; of the same family when there are three or more."""
    by_job: dict[str, dict[str, list[Curve]]] = {}
    for curve in curves:
        by_job.setdefault(curve.program, {}).setdefault(curve.context, []).append(curve)
    problems = []
    for key, contexts in by_job.items():
        if key == job.program:
            continue
        if same_job and len(contexts) < 2:
            continue
        for context, group in contexts.items():
            first = group[0]
            held = {(key, c) for c in contexts} if not same_job else {(key, context)}
            fields = _boosting_fields(first.boosting) if first.boosting else {}
            if first.size:
                fields["bytes_in_memory" if first.size_kind == "bytes" else "n_rows"] = int(
                    first.size
                )
            described = JobFeatures(name=first.job, context=context, family=first.family, **fields)
            problems.append((described, held, group))
    family = [p for p in problems if p[0].family == job.family]
    return family if len({p[0].name for p in family}) >= 3 else problems


def _boosting_fields(job: JobFeatures) -> dict:
    return job.model_dump(exclude={"name", "context", "family", "params"})


def loo_score(
    name: str,
    problems: Sequence[tuple[JobFeatures, set, list[Curve]]],
    curves: Sequence[Curve],
    predict: ProblemPredictor,
    price: PriceFn,
) -> Score:
    """Mean regret of ``name``'s picks on the held-out problems, and its log-time error."""
    regrets, errors = [], []
    for job, held, group in problems:
        rest = [c for c in curves if c.key not in held]
        for curve in group:
            if len(curve.times) < 2:
                continue
            shapes = [_shape(curve.kind, n) for n in curve.times]
            predicted = predict(name, job, shapes, rest, held)
            if len(predicted) < len(shapes):
                continue
            measured = {s: curve.times[s.workers] * price(s) for s in shapes}
            guess = {s: predicted[s][0] * price(s) for s in shapes}
            pick = min(guess, key=guess.get)
            regrets.append(measured[pick] / min(measured.values()) - 1)
            errors += [abs(math.log(predicted[s][0] / curve.times[s.workers])) for s in shapes]
    if len(regrets) < MIN_PROBLEMS:
        return Score(name, math.inf, math.inf, len(regrets))
    return Score(name, float(np.mean(regrets)), float(np.median(errors)), len(regrets))


def _shape(kind: NodeKind, workers: int) -> ClusterShape:
    machine_type, threads, gpu = kind
    return ClusterShape(
        workers=workers,
        threads_per_worker=threads,
        memory_per_worker_bytes=1,  # time does not depend on it here
        gpu=gpu,
        machine_type=machine_type,
    )


def select_predictor(
    names: Sequence[str],
    job: JobFeatures,
    curves: Sequence[Curve],
    predict: ProblemPredictor,
    price: PriceFn,
    same_job: bool,
    max_problems: int = 60,
) -> list[Score]:
    """Every candidate predictor's leave-one-out score, best first (ties: the order given)."""
    problems = held_out_problems(curves, job, same_job)[:max_problems]
    scores = [loo_score(n, problems, curves, predict, price) for n in names]
    order = {n: i for i, n in enumerate(names)}
    return sorted(scores, key=lambda s: (round(s.mean_regret, 2), s.log_error, order[s.name]))
