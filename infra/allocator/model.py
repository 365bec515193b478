"""Predicting a training job's time and peak worker memory on any cluster shape.

Three layers, each usable alone (the benchmark compares them):

1. **Ernest prior** (Venkataraman et al., NSDI 2016): ``t = a + b*work/(workers*threads)
   + c*log(workers) + d*workers``, and ``mem = base + k*bytes/workers``. Fixed, generic
   coefficients when there is no history; refitted on the history when there is.
2. **Cost model**: the same idea with the terms that matter for histogram boosting on Dask:
   rounds, histogram work per round spread over the threads that really run in parallel
   (``min(workers*threads, cores)``), per-round communication between workers, worker
   start-up, data loading, and a penalty for more threads than cores. Fitted on the whole
   history by non-negative least squares on relative error.
3. **Transfer**: the ratio of measured to modelled time (and memory) of the most similar past
   jobs on the same shape corrects the model for this shape, shrunk toward 1 with few
   neighbours. This is what learns, for example, that oversubscribed shapes are slow here.

The cost model's terms are those of histogram boosting, which LightGBM and XGBoost share; each
family other than the most measured one gets its own time and memory factor (its measured
over modelled cost, fitted with the coefficients) and its own early-stopping ratio, and the
nearest jobs are those of the same family first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy.optimize import nnls

from .history import ClusterShape, JobFeatures, RunProfile

PAUSE_FRACTION = 0.8
"""Dask pauses a worker whose process memory reaches this share of its limit."""
MAX_SAFE_FRACTION = 0.9
"""Never plan a peak closer than this to the limit (the nanny kills a worker at 95%)."""

# Generic coefficients of the cold-start prior (not fitted on any benchmark data): about 2 ns
# per row x feature x tree on one thread, 2 s of cluster start-up plus 1 s per worker, 2 ms
# of communication per round per extra worker; 450 MiB for an idle worker process with its
# libraries (the size of one on this stack), plus three times its share of the data (pandas
# partitions, LightGBM's binned copy, the validation split every worker scores on).
PRIOR_TIME = np.array([2.0, 2e-9, 2e-3, 1.0])
PRIOR_MEMORY = np.array([450 * 2**20, 3.0])
PRIOR_MEMORY_FULL = np.array([450 * 2**20, 3.0, 0.0, 0.0])


@dataclass(frozen=True)
class Prediction:
    """Predicted total time (start-up + training) and peak memory per worker."""

    time_s: float
    peak_memory_bytes: int


def expected_rounds(job: JobFeatures, stop_ratio: float = 1.0) -> float:
    """Boosting rounds to expect: all of them, or a learned share when early stopping is on."""
    ratio = stop_ratio if (job.early_stopping_rounds or 0) > 0 else 1.0
    return max(1.0, (job.n_estimators or 1) * ratio)


def round_work(job: JobFeatures) -> float:
    """Histogram work of one boosting round: rows x features x trees per round."""
    return float(job.n_rows) * job.n_features * job.trees_per_round


# ---------------------------------------------------------------- Ernest


def ernest_terms(job: JobFeatures, shape: ClusterShape, rounds: float) -> np.ndarray:
    """The four Ernest terms: 1, work/(workers*threads), log(workers), workers."""
    work = rounds * round_work(job)
    return np.array([1.0, work / shape.threads, rounds * math.log(shape.workers), shape.workers])


def memory_terms(job: JobFeatures, shape: ClusterShape) -> np.ndarray:
    """``mem = base + k * bytes / workers`` (Ernest's form)."""
    return np.array([1.0, job.bytes_in_memory / shape.workers])


def full_memory_terms(job: JobFeatures, shape: ClusterShape) -> np.ndarray:
    """Ernest's memory terms plus what each extra thread of a worker adds.

    LightGBM's threads build their own buffers over the worker's share of the data; measured
    here, a second thread can add a third to a worker's peak.
    """
    share = job.bytes_in_memory / shape.workers
    extra = shape.threads_per_worker - 1
    return np.array([1.0, share, extra * share, float(extra)])


# ---------------------------------------------------------------- the cost model


def cost_terms(
    job: JobFeatures, shape: ClusterShape, rounds: float, cores: int | None
) -> np.ndarray:
    """Basis functions of total time for histogram boosting on Dask (see the module docstring).

    ``cores`` is what the workers share on one machine; None when every worker has its own
    cores for its threads (a multi-machine cluster), so nothing is oversubscribed.
    """
    cores = cores or shape.threads
    parallel = min(shape.threads, cores)
    oversubscribed = max(0.0, shape.threads / cores - 1.0)
    work = rounds * round_work(job)
    split_search = rounds * job.num_leaves * job.n_features * job.max_bin * job.trees_per_round
    return np.array(
        [
            1.0,
            shape.workers,
            job.bytes_in_memory / min(shape.workers, cores),
            work / parallel,
            split_search / parallel,
            rounds * (shape.workers - 1),
            rounds * math.log(shape.workers),
            work * oversubscribed,
            rounds * oversubscribed * (shape.workers - 1),
        ]
    )


def _fit(rows: list[np.ndarray], targets: list[float], prior: np.ndarray) -> np.ndarray:
    """Non-negative least squares on relative error.

    With fewer runs than terms the fit is underdetermined (one run would put all its time on
    whichever term explains it alone), so the prior stays until there is enough history; the
    transfer from similar runs corrects it meanwhile.
    """
    if len(rows) < len(prior):
        return prior
    matrix = np.array(rows)
    target = np.array(targets)
    weights = 1.0 / np.maximum(target, 1e-9)
    coefficients, _ = nnls(matrix * weights[:, None], target * weights)
    return coefficients


@dataclass
class FittedModel:
    """Time and memory coefficients fitted on a history, plus what transfer needs."""

    kind: str
    time_coefficients: np.ndarray
    memory_coefficients: np.ndarray
    stop_ratio: float
    cores: int | None
    runs: list[RunProfile] = field(default_factory=list)
    family_factors: dict[str | None, tuple[float, float]] = field(default_factory=dict)
    """Per family: its time and memory over the model's (1 for the reference family)."""
    stop_ratios: dict[str | None, float] = field(default_factory=dict)
    """Per family: the share of the allowed rounds its early-stopped runs ran."""

    def _time_terms(self, job: JobFeatures, shape: ClusterShape, rounds: float) -> np.ndarray:
        if self.kind == "ernest":
            return ernest_terms(job, shape, rounds)
        return cost_terms(job, shape, rounds, self.cores)

    def base_prediction(
        self, job: JobFeatures, shape: ClusterShape, rounds: float | None = None
    ) -> Prediction:
        """The fitted model's prediction, before any transfer correction."""
        stop_ratio = self.stop_ratios.get(job.family, self.stop_ratio)
        rounds = rounds if rounds is not None else expected_rounds(job, stop_ratio)
        time_factor, memory_factor = self.family_factors.get(job.family, (1.0, 1.0))
        time_s = float(self._time_terms(job, shape, rounds) @ self.time_coefficients)
        terms = memory_terms if self.kind == "ernest" else full_memory_terms
        memory = float(terms(job, shape) @ self.memory_coefficients)
        return Prediction(max(time_s * time_factor, 0.05), int(max(memory * memory_factor, 1.0)))


def fit_model(runs: Sequence[RunProfile], cores: int | None, kind: str = "cost") -> FittedModel:
    """Fit time and memory on every usable run (successes; timeouts as lower bounds).

    The coefficients are fitted on the most measured family's runs first; each other family's
    factor (its measured over modelled cost) is read against them, and then every family's
    runs fit the coefficients together, each divided by its factor (twice, the factors read
    again in between).

    Args:
        runs: The history.
        cores: CPU cores of the machine the candidates would share (None: each worker has
            its own).
        kind: ``"cost"`` (the full model) or ``"ernest"`` (the four-term prior's form).
    """
    runs = [r for r in runs if r.job.is_boosting]  # the others are predicted from curves
    model = FittedModel(
        kind=kind,
        time_coefficients=PRIOR_TIME if kind == "ernest" else _cost_prior(),
        memory_coefficients=PRIOR_MEMORY if kind == "ernest" else PRIOR_MEMORY_FULL,
        stop_ratio=_stop_ratio(runs),
        cores=cores,
        runs=list(runs),
        stop_ratios={f: _stop_ratio([r for r in runs if r.family == f]) for f in _families(runs)},
    )
    families = _families([r for r in runs if not r.gpu])
    reference = [r for r in runs if r.family == families[0]] if families else runs
    model.time_coefficients, model.memory_coefficients = _fit_coefficients(model, reference)
    for _ in range(2 if len(families) > 1 else 0):  # the factors start right: they settle fast
        model.family_factors = family_factors(model, runs)
        model.time_coefficients, model.memory_coefficients = _fit_coefficients(model, runs)
    model.family_factors = family_factors(model, runs)
    return model


def _fit_coefficients(model: FittedModel, runs: Sequence[RunProfile]) -> tuple[np.ndarray, ...]:
    """Time and memory coefficients on the CPU runs, each target over its family's factor."""
    cpu_runs = [r for r in runs if not r.gpu]  # GPU runs teach the GPU speed-up instead
    timed = [r for r in cpu_runs if r.status in ("success", "timeout") and r.total_time_s > 0]
    measured = [r for r in cpu_runs if r.status == "success" and r.peak_memory_bytes]
    factors = model.family_factors
    time_rows, time_targets = [], []
    for run in timed:
        stop_ratio = model.stop_ratios.get(run.family, model.stop_ratio)
        rounds = (run.status == "success" and run.iterations) or expected_rounds(
            run.job, stop_ratio
        )
        time_rows.append(
            ernest_terms(run.job, run.shape, rounds)
            if model.kind == "ernest"
            else cost_terms(
                run.job, run.shape, rounds, None if run.backend != "local" else run.host_cpus
            )
        )
        time_targets.append(run.total_time_s / factors.get(run.family, (1.0, 1.0))[0])
    prior_time = PRIOR_TIME if model.kind == "ernest" else _cost_prior()
    terms = memory_terms if model.kind == "ernest" else full_memory_terms
    memory = _fit(
        [terms(r.job, r.shape) for r in measured],
        [float(r.peak_memory_bytes) / factors.get(r.family, (1.0, 1.0))[1] for r in measured],
        PRIOR_MEMORY if model.kind == "ernest" else PRIOR_MEMORY_FULL,
    )
    return _fit(time_rows, time_targets, prior_time), memory


def _families(runs: Sequence[RunProfile]) -> list[str | None]:
    """The families of ``runs``, the most measured first."""
    counts: dict[str | None, int] = {}
    for run in runs:
        counts[run.family] = counts.get(run.family, 0) + 1
    return sorted(counts, key=lambda f: -counts[f])


def family_factors(
    model: FittedModel, runs: Sequence[RunProfile]
) -> dict[str | None, tuple[float, float]]:
    """Each family's measured time and peak memory over the model's (without factors), as
    geometric means over its CPU runs, shrunk toward 1 with few runs (n / (n + 1)); 1 for the
    most measured family, which the coefficients describe."""
    families = _families([r for r in runs if not r.gpu])
    unscaled = replace(model, family_factors={})
    factors: dict[str | None, tuple[float, float]] = {}
    for family in families[1:]:
        own = [r for r in runs if r.family == family and not r.gpu and r.status == "success"]
        times = [
            math.log(
                r.total_time_s
                / unscaled.base_prediction(r.job, r.shape, r.iterations or None).time_s
            )
            for r in own
            if r.total_time_s > 0
        ]
        memory = [
            math.log(
                r.peak_memory_bytes / unscaled.base_prediction(r.job, r.shape).peak_memory_bytes
            )
            for r in own
            if r.peak_memory_bytes
        ]
        factors[family] = (_shrunk_mean(times), _shrunk_mean(memory))
    return factors


def _shrunk_mean(logs: list[float]) -> float:
    """``exp`` of the mean log ratio, shrunk toward 1 (0) by n / (n + 1)."""
    if not logs:
        return 1.0
    return math.exp(len(logs) / (len(logs) + 1) * float(np.mean(logs)))


def _cost_prior() -> np.ndarray:
    """The cost model's terms seeded with the Ernest prior's coefficients (others zero)."""
    a, b, c, d = PRIOR_TIME
    return np.array([a, d, 0.0, b, 0.0, 0.0, c, 0.0, 0.0])


def _stop_ratio(runs: Sequence[RunProfile]) -> float:
    """Median share of the allowed rounds that early-stopped runs actually ran."""
    ratios = [
        r.iterations / r.n_estimators
        for r in runs
        if r.status == "success" and (r.early_stopping_rounds or 0) > 0 and r.iterations
    ]
    return float(np.median(ratios)) if ratios else 1.0


# ---------------------------------------------------------------- similarity and transfer


def job_vector(job: JobFeatures) -> np.ndarray:
    """Meta-features on comparable scales, for finding similar past jobs."""
    return np.array(
        [
            math.log10(job.n_rows),
            math.log10(job.n_features),
            math.log10(job.bytes_in_memory),
            (job.n_categorical or 0) / job.n_features,
            math.log10(1 + (job.max_cardinality or 0)) / 2,
            job.sparsity or 0.0,
            math.log10(job.n_estimators),
            math.log2(job.num_leaves) / 2,
            math.log2(job.max_bin) / 2,
            math.log2(job.trees_per_round),
        ]
    )


FAMILY_GAP = 1.0
"""The distance between jobs of two families, on the scale of :func:`job_vector` (ten times
the rows is 1): the same data trained by the other family is as near as a dataset ten times
bigger of the same family."""


def job_distance(a: JobFeatures, b: JobFeatures) -> float:
    """Euclidean distance between two jobs' meta-feature vectors, and their families."""
    gap = 0.0 if a.family == b.family else FAMILY_GAP
    return float(np.hypot(np.linalg.norm(job_vector(a) - job_vector(b)), gap))


@dataclass(frozen=True)
class Neighbour:
    """A past job near this one, with its distance."""

    key: tuple[str, str]
    distance: float
    runs: tuple[RunProfile, ...]


def nearest_jobs(job: JobFeatures, runs: Sequence[RunProfile], k: int = 3) -> list[Neighbour]:
    """The ``k`` most similar past jobs (a job = one dataset version with its parameters)."""
    groups: dict[tuple[str, str], list[RunProfile]] = {}
    if not job.is_boosting:
        return []
    for run in runs:
        if not run.job.is_boosting:
            continue
        key = (
            run.dataset_version or run.use_case,
            f"{run.family}/{run.n_estimators}/{run.num_leaves}/{run.max_bin}",
        )
        groups.setdefault(key, []).append(run)
    ranked = sorted(
        (
            Neighbour(key, job_distance(job, group[0].job), tuple(group))
            for key, group in groups.items()
        ),
        key=lambda n: n.distance,
    )
    return ranked[:k]


def same_shape(a: ClusterShape, b: ClusterShape) -> bool:
    """Same workers, threads, GPU use and machine type (memory limits aside)."""
    return (a.workers, a.threads_per_worker, a.gpu, a.machine_type) == (
        b.workers,
        b.threads_per_worker,
        b.gpu,
        b.machine_type,
    )


def transfer_ratio(
    model: FittedModel,
    neighbours: Sequence[Neighbour],
    shape: ClusterShape,
    metric: str,
) -> tuple[float, float]:
    """Measured/modelled ratio for ``shape`` on similar jobs, shrunk toward 1.

    Returns:
        The correction factor and its support (effective number of neighbour runs).
    """
    logs, weights = [], []
    for neighbour in neighbours:
        for run in neighbour.runs:
            if not same_shape(run.shape, shape):
                continue
            if metric == "time" and run.status in ("success", "timeout"):
                rounds = (run.iterations or None) if run.status == "success" else None
                modelled = model.base_prediction(run.job, run.shape, rounds).time_s
                observed = run.total_time_s
            elif metric == "memory" and run.status == "success" and run.peak_memory_bytes:
                modelled = model.base_prediction(run.job, run.shape).peak_memory_bytes
                observed = float(run.peak_memory_bytes)
            else:
                continue
            logs.append(math.log(max(observed, 1e-6) / max(modelled, 1e-6)))
            weights.append(1.0 / (0.1 + neighbour.distance))
    if not logs:
        return 1.0, 0.0
    support = float(sum(weights)) / 10.0  # 10 = weight of a neighbour at distance 0
    shrink = support / (support + 0.5)
    return math.exp(shrink * float(np.average(logs, weights=weights))), support


def safe_fraction(runs: Sequence[RunProfile]) -> float:
    """How close to its limit a worker's peak may be planned, learned from past successes.

    Dask pauses a worker at 80% of its limit, which stalls a run only when the worker still
    needs new tasks; runs that peaked above that and finished show how far it is safe to go
    here. Starts at 80%, never above :data:`MAX_SAFE_FRACTION`.
    """
    ratios = [
        r.peak_memory_bytes / r.memory_per_worker_bytes
        for r in runs
        if r.status == "success" and r.peak_memory_bytes and not r.gpu
    ]
    return min(max([PAUSE_FRACTION, *ratios]), MAX_SAFE_FRACTION)


def memory_spread(
    model: FittedModel, neighbours: Sequence[Neighbour], prior: float = 0.15
) -> float:
    """How far off the corrected memory prediction was on similar past runs (sd of log error).

    Each similar run is compared with the model's prediction for it after the same shape's
    transfer correction, so this is the error left once the history has been used. The memory
    margin grows with it. With fewer than three such runs, ``prior`` stands in.
    """
    logs = []
    for neighbour in neighbours:
        for run in neighbour.runs:
            if run.status != "success" or not run.peak_memory_bytes or run.gpu:
                continue
            ratio, _ = transfer_ratio(model, neighbours, run.shape, "memory")
            modelled = model.base_prediction(run.job, run.shape).peak_memory_bytes * ratio
            logs.append(math.log(run.peak_memory_bytes / modelled))
    return float(np.sqrt(np.mean(np.square(logs)))) if len(logs) >= 3 else prior
