"""The data gate's checks: an expectation suite derived from a reference dataset (no GX run).

A new data-gate check goes here: a builder that returns one expectation in GX's suite JSON form
(:func:`_expectation`), called from :func:`derive_suite` when its name is in ``data_gate.checks``
(the names are ``DataCheck`` in :mod:`mlops.config`), and, when it needs a statistic of the
reference, a field of :class:`ColumnProfile` filled by :func:`profile_reference`.

The reference is the dataset the current champion was trained on (or, before there is a
champion, the candidate itself: the first accepted dataset). :func:`profile_reference` summarises
its rows; :func:`derive_suite` turns that profile, the columns the config declares and the gate's
tolerances into a Great Expectations suite: the exact column set and types, nulls, numeric ranges,
categorical value sets, row-count bounds, target class balance, and mean / standard deviation /
median within a tolerance. Every expectation carries, in its ``meta``, the check id, a
description, what was allowed and how its result is measured (read by
:mod:`tasks.gx_checkpoint`), so the report can say it in words.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from prefect_mlops.mlops.config import DataConfig, DataGateConfig
from prefect_mlops.mlops.dataset import DatasetRef

SUITE_FORMAT = "1"  # bump when derive_suite changes what it produces
COLUMN_SET = "expect_table_columns_to_match_set"
COLUMN_TYPE = "expect_column_values_to_be_in_type_list"
ROW_COUNT = "expect_table_row_count_to_be_between"
ColumnKind = Literal["numeric", "categorical", "datetime", "key", "target"]
_TYPE_NAMES: dict[str, list[str]] = {
    "numeric": ["float64", "Float64", "float32", "int64", "Int64"],
    "categorical": ["StringDtype", "object"],
    "key": ["StringDtype", "object"],
    "datetime": ["datetime64[ns]", "datetime64[us]", "datetime64[ms]", "datetime64[s]"],
}


class ColumnProfile(BaseModel):
    """What the reference data looked like in one column."""

    kind: ColumnKind
    null_fraction: float
    distinct: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    median: float | None = None
    iqr: float | None = None
    values: list[str] | None = None


class ReferenceProfile(BaseModel):
    """The reference dataset, summarised for deriving expectations."""

    dataset_version: str
    dataset_name: str
    task: str
    target: str
    rows: int
    columns: dict[str, ColumnProfile]
    class_shares: dict[str, float] | None = None


# ---------------------------------------------------------------- the reference profile


def column_kinds(dataset: DatasetRef, columns: list[str]) -> dict[str, ColumnKind]:
    """How each column of a dataset's split files is used (anything unlisted is a row key)."""
    spec = dataset.feature_spec
    kinds: dict[str, ColumnKind] = {}
    for column in columns:
        if column == dataset.target:
            kinds[column] = "target"
        elif column in spec.numeric:
            kinds[column] = "numeric"
        elif column in spec.datetime:
            kinds[column] = "datetime"
        elif column in spec.categorical:
            kinds[column] = "categorical"
        else:
            kinds[column] = "key"
    return kinds


def _numeric_stats(values: pd.Series) -> dict[str, float | None]:
    present = pd.to_numeric(values, errors="coerce").dropna()
    if present.empty:
        return {}
    q25, q50, q75 = present.quantile([0.25, 0.5, 0.75]).to_numpy()
    return {
        "min": float(present.min()),
        "max": float(present.max()),
        "mean": float(present.mean()),
        "std": float(present.std(ddof=0)),
        "median": float(q50),
        "iqr": float(q75 - q25),
    }


def profile_reference(
    frame: pd.DataFrame,
    dataset: DatasetRef,
    max_listed_categories: int,
    rows_total: int | None = None,
) -> ReferenceProfile:
    """Summarise the reference rows: nulls, ranges, moments, value sets, class shares.

    Args:
        frame: The reference rows (all of them, or a uniform sample).
        dataset: The reference dataset version.
        max_listed_categories: Columns with more distinct values get no value list.
        rows_total: The dataset's row count when ``frame`` is a sample.
    """
    kinds = column_kinds(dataset, list(frame.columns))
    columns: dict[str, ColumnProfile] = {}
    for column, kind in kinds.items():
        values = frame[column]
        distinct = int(values.nunique(dropna=True))
        entry: dict[str, Any] = {
            "kind": kind,
            "null_fraction": float(values.isna().mean()) if len(values) else 0.0,
            "distinct": distinct,
        }
        numeric_target = kind == "target" and dataset.task == "regression"
        if kind == "numeric" or numeric_target:
            entry |= _numeric_stats(values)
        elif kind in ("categorical", "target") and distinct <= max_listed_categories:
            entry["values"] = sorted(str(v) for v in values.dropna().unique())
        columns[column] = ColumnProfile(**entry)
    shares = None
    if dataset.task != "regression":
        counts = frame[dataset.target].value_counts(normalize=True)
        shares = {str(label): float(counts.get(label, 0.0)) for label in dataset.classes or []}
    return ReferenceProfile(
        dataset_version=dataset.version,
        dataset_name=dataset.name,
        task=dataset.task,
        target=dataset.target,
        rows=rows_total or len(frame),
        columns=columns,
        class_shares=shares,
    )


# ---------------------------------------------------------------- deriving the suite


def _pct(share: float) -> str:
    return f"{100 * share:.3g}%"


def _num(value: float) -> str:
    return f"{value:.6g}"


def _expectation(
    kind: str, check: str, description: str, allowed: str, measure: str, **kwargs: Any
) -> dict[str, Any]:
    """One expectation in GX's suite JSON form, with what our report needs in ``meta``."""
    meta = {"check": check, "description": description, "allowed": allowed, "measure": measure}
    return {"type": kind, "kwargs": kwargs, "meta": meta}


def suite_name_for(reference: DatasetRef, gate: DataGateConfig, data: DataConfig) -> str:
    """A name that changes whenever the reference, the gate settings or the declarations do."""
    settings = json.dumps(
        {
            "gate": gate.model_dump(mode="json"),
            "declared": data.model_dump(
                mode="json", include={"target", "id_column", "categorical", "datetime"}
            ),
            "format": SUITE_FORMAT,
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(settings.encode()).hexdigest()[:8]
    return f"{reference.name}-{reference.version}-{digest}"


def declared_kinds(reference: ReferenceProfile, data: DataConfig) -> dict[str, ColumnKind]:
    """The reference's column kinds, overridden by what the config declares."""
    kinds = {c: p.kind for c, p in reference.columns.items()}
    for column in data.categorical or []:
        if column in kinds:
            kinds[column] = "categorical"
    for column in data.datetime or []:
        if column in kinds:
            kinds[column] = "datetime"
    if data.id_column and data.id_column in kinds:
        kinds[data.id_column] = "key"
    return kinds


def derive_suite(
    reference: ReferenceProfile, gate: DataGateConfig, data: DataConfig
) -> dict[str, Any]:
    """The expectation suite (GX suite JSON) for data that should look like the reference.

    Args:
        reference: Profile of the reference dataset version.
        gate: Which checks apply and their tolerances.
        data: The use case's declared columns (``categorical``, ``datetime``, ``id_column``).

    Returns:
        A mapping accepted by ``great_expectations.ExpectationSuite(**suite)``.
    """
    kinds = declared_kinds(reference, data)
    checks = set(gate.checks)
    expectations: list[dict[str, Any]] = []
    if "columns" in checks:
        expectations.append(_columns_expectation(sorted(reference.columns)))
    if "row_count" in checks:
        expectations.extend(_row_count_expectation(reference.rows, gate))
    for column, profile in reference.columns.items():
        kind = kinds[column]
        if "types" in checks and kind != "target":
            expectations.append(_type_expectation(column, kind))
        if "nulls" in checks and kind != "target":
            expectations.extend(_null_expectations(column, profile, gate))
        if column in gate.ignore_columns:
            continue
        numeric = kind == "numeric" or (kind == "target" and reference.task == "regression")
        if numeric and "ranges" in checks:
            expectations.extend(_range_expectations(column, profile, gate, reference.rows))
        if numeric and "distribution" in checks:
            expectations.extend(_distribution_expectations(column, profile, gate))
        if kind in ("categorical", "target") and "categories" in checks and profile.values:
            expectations.append(_category_expectation(column, profile, gate, reference.rows, kind))
    if "class_balance" in checks and reference.class_shares:
        expectations.extend(_class_share_expectations(reference, gate))
    return {"name": "", "expectations": expectations, "meta": {}}


def _columns_expectation(columns: list[str]) -> dict[str, Any]:
    return _expectation(
        COLUMN_SET,
        "table.columns",
        "column set matches the reference",
        f"exactly {len(columns)} columns: {', '.join(columns)}",
        "columns",
        column_set=columns,
        exact_match=True,
    )


def _row_count_expectation(reference_rows: int, gate: DataGateConfig) -> list[dict[str, Any]]:
    lows = [gate.min_rows] if gate.min_rows is not None else []
    highs = [gate.max_rows] if gate.max_rows is not None else []
    if gate.min_rows_ratio is not None:
        lows.append(math.floor(gate.min_rows_ratio * reference_rows))
    if gate.max_rows_ratio is not None:
        highs.append(math.ceil(gate.max_rows_ratio * reference_rows))
    if not lows and not highs:
        return []
    low, high = (max(lows) if lows else None), (min(highs) if highs else None)
    bounds = f"{low or 0:,} to {f'{high:,}' if high is not None else 'any'} rows"
    return [
        _expectation(
            ROW_COUNT,
            "table.row_count",
            "row count within bounds",
            f"{bounds} (reference {reference_rows:,})",
            "observed",
            min_value=low,
            max_value=high,
        )
    ]


def _type_expectation(column: str, kind: ColumnKind) -> dict[str, Any]:
    return _expectation(
        COLUMN_TYPE,
        f"column.{column}.type",
        f"'{column}' is {kind}",
        f"{kind} ({' / '.join(_TYPE_NAMES[kind][:2])})",
        "type",
        column=column,
        type_list=_TYPE_NAMES[kind],
    )


def _null_expectations(
    column: str, profile: ColumnProfile, gate: DataGateConfig
) -> list[dict[str, Any]]:
    if column in gate.not_null:
        return [
            _expectation(
                "expect_column_values_to_not_be_null",
                f"column.{column}.not_null",
                f"'{column}' has no nulls (declared in data_gate.not_null)",
                "no nulls",
                "unexpected_share",
                column=column,
            )
        ]
    allowed = min(1.0, profile.null_fraction + gate.max_null_increase)
    return [
        _expectation(
            "expect_column_proportion_of_non_null_values_to_be_between",
            f"column.{column}.nulls",
            f"'{column}' null share",
            f"at most {_pct(allowed)} null (reference {_pct(profile.null_fraction)})",
            "null_share",
            column=column,
            min_value=round(1.0 - allowed, 6),
            max_value=1.0,
        )
    ]


def _bounds_text(low: float | None, high: float | None) -> str:
    if low is None:
        return f"≤ {high:g}"
    if high is None:
        return f"≥ {low:g}"
    return f"in [{low:g}, {high:g}]"


def _small_sample_slack(reference_rows: int) -> float:
    """Share of new rows expected beyond a reference's extremes by chance alone, times 2.5."""
    return 5.0 / max(reference_rows, 1)


def _range_expectations(
    column: str, profile: ColumnProfile, gate: DataGateConfig, reference_rows: int
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    declared = gate.value_ranges.get(column)
    if declared is not None:
        found.append(
            _expectation(
                "expect_column_values_to_be_between",
                f"column.{column}.declared_range",
                f"'{column}' within declared bounds",
                f"every value {_bounds_text(declared.min, declared.max)}",
                "unexpected_share",
                column=column,
                min_value=declared.min,
                max_value=declared.max,
            )
        )
    if profile.min is not None and profile.max is not None:
        outside = max(gate.max_out_of_range, _small_sample_slack(reference_rows))
        found.append(
            _expectation(
                "expect_column_values_to_be_between",
                f"column.{column}.range",
                f"'{column}' within the reference range",
                f"at most {_pct(outside)} outside [{_num(profile.min)}, {_num(profile.max)}]",
                "unexpected_share",
                column=column,
                min_value=profile.min,
                max_value=profile.max,
                mostly=round(1.0 - outside, 6),
            )
        )
    return found


def _distribution_expectations(
    column: str, profile: ColumnProfile, gate: DataGateConfig
) -> list[dict[str, Any]]:
    if profile.mean is None or profile.std is None:
        return []
    found = []
    spread = gate.max_mean_shift * profile.std
    found.append(
        _bounded(
            "expect_column_mean_to_be_between",
            f"column.{column}.mean",
            f"'{column}' mean close to the reference",
            profile.mean - spread,
            profile.mean + spread,
            f"reference {_num(profile.mean)} ± {gate.max_mean_shift:g} std",
            column,
        )
    )
    if profile.std > 0:
        found.append(
            _bounded(
                "expect_column_stdev_to_be_between",
                f"column.{column}.stdev",
                f"'{column}' standard deviation close to the reference",
                profile.std / gate.max_stdev_ratio,
                profile.std * gate.max_stdev_ratio,
                f"reference {_num(profile.std)} within a factor {gate.max_stdev_ratio:g}",
                column,
            )
        )
    # A median of a column with few distinct values jumps between them by chance.
    if profile.median is not None and profile.iqr and profile.distinct > 10:
        spread = gate.max_median_shift * profile.iqr
        found.append(
            _bounded(
                "expect_column_median_to_be_between",
                f"column.{column}.median",
                f"'{column}' median close to the reference",
                profile.median - spread,
                profile.median + spread,
                f"reference {_num(profile.median)} ± {gate.max_median_shift:g} IQR",
                column,
            )
        )
    return found


def _bounded(
    kind: str, check: str, description: str, low: float, high: float, why: str, column: str
) -> dict[str, Any]:
    return _expectation(
        kind,
        check,
        description,
        f"[{_num(low)}, {_num(high)}] ({why})",
        "observed",
        column=column,
        min_value=low,
        max_value=high,
    )


def _category_expectation(
    column: str, profile: ColumnProfile, gate: DataGateConfig, reference_rows: int, kind: str
) -> dict[str, Any]:
    values = profile.values or []
    if kind == "target":  # a class the model has never seen cannot be predicted: no tolerance
        unseen, label = 0.0, f"target '{column}' has only the reference's classes"
    else:
        unseen = max(gate.max_unseen_categories, _small_sample_slack(reference_rows))
        label = f"'{column}' values seen in the reference"
    shown = ", ".join(values[:12]) + (f", … ({len(values)} in all)" if len(values) > 12 else "")
    return _expectation(
        "expect_column_values_to_be_in_set",
        f"column.{column}.categories",
        label,
        f"at most {_pct(unseen)} of values outside {{{shown}}}",
        "unexpected_share",
        column=column,
        value_set=values,
        mostly=round(1.0 - unseen, 6),
    )


def class_share_bounds(share: float, gate: DataGateConfig, rows: int) -> tuple[float, float]:
    """How far a class's share may move: the tighter of the relative and absolute tolerances,
    plus three standard errors of the reference share (so small datasets do not trip it)."""
    noise = 3.0 * math.sqrt(share * (1 - share) / max(rows, 1))
    spread = min(gate.max_class_share_change * share, gate.max_class_share_shift) + noise
    return max(0.0, share - spread), min(1.0, share + spread)


def _class_share_expectations(
    reference: ReferenceProfile, gate: DataGateConfig
) -> list[dict[str, Any]]:
    target = reference.target
    found = []
    for label, share in (reference.class_shares or {}).items():
        low, high = class_share_bounds(share, gate, reference.rows)
        allowed = f"[{_pct(low)}, {_pct(high)}] (reference {_pct(share)})"
        found.append(
            _expectation(
                "expect_column_values_to_be_in_set",
                f"target.{target}.share.{label}.min",
                f"share of class '{label}' in '{target}' not too low",
                allowed,
                "class_share_in",
                column=target,
                value_set=[label],
                mostly=round(low, 6),
            )
        )
        found.append(
            _expectation(
                "expect_column_values_to_not_be_in_set",
                f"target.{target}.share.{label}.max",
                f"share of class '{label}' in '{target}' not too high",
                allowed,
                "class_share_out",
                column=target,
                value_set=[label],
                mostly=round(1.0 - high, 6),
            )
        )
    return found
