"""Drift statistics: how far recent values moved from a reference, per feature and for predictions.

- **PSI** (population stability index), ``sum((cur - ref) * ln(cur / ref))`` over bins: for a
  numeric column the bins are the reference's quantiles, for a categorical column its most
  frequent values plus "(other)". Missing values are a bin of their own, so a column that
  starts arriving empty drifts too. Rule of thumb: below 0.1 stable, 0.1-0.2 a moderate shift,
  0.2 and above a significant one.
- **KS**: the two-sample Kolmogorov-Smirnov statistic (largest gap between the two empirical
  distribution functions) and its p-value, on the non-missing values of a numeric column.

Pure functions on arrays and frames; no I/O.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel
from scipy import stats

from prefect_mlops.mlops.config import MonitoringConfig

EPSILON = 1e-4
"""Floor of a bin's share, so an empty bin does not make PSI infinite."""
MISSING = "(missing)"
OTHER = "(other)"
MAX_CATEGORIES = 20


class ColumnDrift(BaseModel):
    """One column's comparison: the statistics, the verdict and the bins behind them."""

    column: str
    kind: Literal["numeric", "categorical"]
    psi: float
    ks_statistic: float | None = None
    ks_pvalue: float | None = None
    drifted: bool = False
    reason: str = ""
    bins: list[str]
    reference_shares: list[float]
    current_shares: list[float]
    reference_rows: int
    current_rows: int


def psi(reference_shares: np.ndarray, current_shares: np.ndarray) -> float:
    """Population stability index of two distributions over the same bins."""
    ref = np.maximum(np.asarray(reference_shares, dtype="float64"), EPSILON)
    cur = np.maximum(np.asarray(current_shares, dtype="float64"), EPSILON)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _shares(codes: np.ndarray, n_bins: int) -> np.ndarray:
    counts = np.bincount(codes, minlength=n_bins).astype("float64")
    return counts / max(counts.sum(), 1.0)


def numeric_drift(
    column: str, reference: pd.Series, current: pd.Series, bins: int = 10
) -> ColumnDrift:
    """PSI over the reference's quantile bins (plus missing) and KS on the present values."""
    ref = pd.to_numeric(reference, errors="coerce").to_numpy("float64")
    cur = pd.to_numeric(current, errors="coerce").to_numpy("float64")
    ref_present, cur_present = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    edges = (
        np.unique(np.quantile(ref_present, np.linspace(0, 1, bins + 1)[1:-1]))
        if ref_present.size
        else np.array([])
    )
    labels = [*_interval_labels(edges), MISSING]

    def codes(values: np.ndarray) -> np.ndarray:
        found = np.searchsorted(edges, values, side="right")
        return np.where(np.isnan(values), len(edges) + 1, found)

    ref_shares = _shares(codes(ref), len(labels))
    cur_shares = _shares(codes(cur), len(labels))
    ks_statistic = ks_pvalue = None
    if ref_present.size and cur_present.size:
        result = stats.ks_2samp(ref_present, cur_present)
        ks_statistic, ks_pvalue = float(result.statistic), float(result.pvalue)
    return ColumnDrift(
        column=column,
        kind="numeric",
        psi=psi(ref_shares, cur_shares),
        ks_statistic=ks_statistic,
        ks_pvalue=ks_pvalue,
        bins=labels,
        reference_shares=ref_shares.tolist(),
        current_shares=cur_shares.tolist(),
        reference_rows=len(ref),
        current_rows=len(cur),
    )


def _interval_labels(edges: np.ndarray) -> list[str]:
    bounds = ["-inf", *(f"{e:.4g}" for e in edges), "inf"]
    return [f"[{lo}, {hi})" for lo, hi in itertools.pairwise(bounds)]


def categorical_drift(
    column: str, reference: pd.Series, current: pd.Series, max_categories: int = MAX_CATEGORIES
) -> ColumnDrift:
    """PSI over the reference's most frequent values, "(other)" and "(missing)"."""
    ref_text = reference.astype("string")
    cur_text = current.astype("string")
    kept = ref_text.value_counts().index[:max_categories].tolist()
    labels = [*kept, OTHER, MISSING]
    lookup = {value: i for i, value in enumerate(kept)}

    def codes(values: pd.Series) -> np.ndarray:
        mapped = values.map(lookup)
        mapped = mapped.where(values.notna(), len(labels) - 1)
        return mapped.fillna(len(kept)).to_numpy("int64")

    ref_shares = _shares(codes(ref_text), len(labels))
    cur_shares = _shares(codes(cur_text), len(labels))
    return ColumnDrift(
        column=column,
        kind="categorical",
        psi=psi(ref_shares, cur_shares),
        bins=labels,
        reference_shares=ref_shares.tolist(),
        current_shares=cur_shares.tolist(),
        reference_rows=len(reference),
        current_rows=len(current),
    )


def judge(drift: ColumnDrift, psi_threshold: float, ks_threshold: float | None) -> ColumnDrift:
    """The comparison with its verdict: drifted when PSI or the KS statistic crosses its threshold."""
    reasons = []
    if drift.psi >= psi_threshold:
        reasons.append(f"PSI {drift.psi:.3f} ≥ {psi_threshold:g}")
    if ks_threshold is not None and (drift.ks_statistic or 0.0) >= ks_threshold:
        reasons.append(f"KS {drift.ks_statistic:.3f} ≥ {ks_threshold:g}")
    return drift.model_copy(update={"drifted": bool(reasons), "reason": "; ".join(reasons)})


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    config: MonitoringConfig,
) -> list[ColumnDrift]:
    """Every compared column, judged, most drifted first."""
    results = [
        judge(
            numeric_drift(c, reference[c], current[c], config.bins),
            config.psi_threshold,
            config.ks_threshold,
        )
        for c in numeric
    ] + [
        judge(categorical_drift(c, reference[c], current[c]), config.psi_threshold, None)
        for c in categorical
    ]
    return sorted(results, key=lambda d: (not d.drifted, -d.psi))


def prediction_drift(
    reference: pd.Series, current: pd.Series, config: MonitoringConfig
) -> ColumnDrift:
    """The prediction distribution: numeric scores by PSI and KS, labels by PSI."""
    name = f"prediction: {reference.name}"
    if pd.api.types.is_numeric_dtype(reference):
        drift = numeric_drift(name, reference, current, config.bins)
        return judge(drift, config.prediction_psi_threshold, config.ks_threshold)
    drift = categorical_drift(name, reference, current)
    return judge(drift, config.prediction_psi_threshold, None)
