"""Deriving the data gate's suite from a reference profile (no GX run)."""

import pandas as pd
import pytest

from prefect_mlops.mlops.config import DataConfig, DataGateConfig, ValueRange
from prefect_mlops.tasks.data_gate import to_validation_frame
from prefect_mlops.tasks.data_gate_checks import class_share_bounds, derive_suite, profile_reference
from tests.data_checks.conftest import make_dataset, split_rows

DATA = DataConfig(source="toy.csv", target="label", id_column="row_id")


def checks_of(suite):
    return {e["meta"]["check"]: e for e in suite["expectations"]}


def test_validation_frame_decodes_the_target_and_keeps_the_input():
    rows = split_rows(10)
    frame = to_validation_frame(rows, make_dataset())
    assert "__target__" not in frame.columns and "__target__" in rows.columns
    expected = rows["__target__"].map({0.0: "no", 1.0: "yes"})
    assert frame["label"].tolist() == expected.tolist()
    assert str(frame["label"].dtype) == "string"


def test_profile_summarises_each_column_kind(reference_rows):
    dataset = make_dataset()
    frame = to_validation_frame(
        reference_rows.assign(
            amount=reference_rows["amount"].where(reference_rows.index % 10 != 0)
        ),
        dataset,
    )
    profile = profile_reference(frame, dataset, max_listed_categories=10)
    amount = profile.columns["amount"]
    assert amount.kind == "numeric" and amount.null_fraction == pytest.approx(0.1)
    assert amount.min < amount.median < amount.max and amount.std > 0
    assert profile.columns["city"].values == ["lyon", "nantes", "paris"]
    assert profile.columns["when"].kind == "datetime" and profile.columns["when"].min is None
    assert profile.columns["row_id"].kind == "key"
    assert profile.class_shares["yes"] == pytest.approx(frame["label"].eq("yes").mean())
    assert profile.rows == 2000


def test_suite_covers_every_kind_of_check(reference_rows):
    dataset = make_dataset()
    profile = profile_reference(to_validation_frame(reference_rows, dataset), dataset, 1000)
    checks = checks_of(derive_suite(profile, DataGateConfig(), DATA))
    assert checks["table.columns"]["kwargs"]["column_set"] == sorted(
        ["row_id", "amount", "city", "when", "label"]
    )
    assert checks["table.row_count"]["kwargs"] == {"min_value": 1000, "max_value": 20000}
    assert checks["column.amount.type"]["kwargs"]["type_list"][0] == "float64"
    assert checks["column.city.type"]["kwargs"]["type_list"] == ["StringDtype", "object"]
    assert "column.when.range" not in checks  # new data is later in time: no range on dates
    assert checks["column.city.categories"]["kwargs"]["value_set"] == ["lyon", "nantes", "paris"]
    assert checks["column.label.categories"]["kwargs"]["mostly"] == 1.0  # no unseen classes
    for kind in ("mean", "stdev", "median", "range", "nulls"):
        assert f"column.amount.{kind}" in checks
    assert {"target.label.share.yes.min", "target.label.share.yes.max"} <= set(checks)


def test_tolerances_become_bounds(reference_rows):
    dataset = make_dataset()
    profile = profile_reference(to_validation_frame(reference_rows, dataset), dataset, 1000)
    gate = DataGateConfig(max_mean_shift=0.5, max_null_increase=0.1, max_out_of_range=0.02)
    checks = checks_of(derive_suite(profile, gate, DATA))
    amount = profile.columns["amount"]
    mean = checks["column.amount.mean"]["kwargs"]
    assert mean["min_value"] == pytest.approx(amount.mean - 0.5 * amount.std)
    assert mean["max_value"] == pytest.approx(amount.mean + 0.5 * amount.std)
    assert checks["column.amount.nulls"]["kwargs"]["min_value"] == pytest.approx(0.9)
    assert checks["column.amount.range"]["kwargs"]["mostly"] == pytest.approx(0.98)


def test_declared_settings_shape_the_suite(reference_rows):
    dataset = make_dataset()
    profile = profile_reference(to_validation_frame(reference_rows, dataset), dataset, 1000)
    gate = DataGateConfig(
        checks=["columns", "nulls", "ranges"],
        not_null=["amount"],
        value_ranges={"amount": ValueRange(min=0)},
        ignore_columns=["city"],
        min_rows=5000,
    )
    checks = checks_of(derive_suite(profile, gate, DATA))
    assert "column.amount.not_null" in checks and "column.amount.nulls" not in checks
    assert checks["column.amount.declared_range"]["kwargs"]["min_value"] == 0
    assert not any(name.endswith((".type", ".mean", ".categories")) for name in checks)
    assert "table.row_count" not in checks  # row_count not among the chosen checks


def test_a_declared_categorical_column_is_typed_as_declared(reference_rows):
    dataset = make_dataset()
    profile = profile_reference(to_validation_frame(reference_rows, dataset), dataset, 1000)
    declared = DataConfig(source="toy.csv", target="label", categorical=["amount"])
    checks = checks_of(derive_suite(profile, DataGateConfig(), declared))
    assert checks["column.amount.type"]["kwargs"]["type_list"] == ["StringDtype", "object"]
    assert "column.amount.mean" not in checks


def test_class_share_bounds_use_the_tighter_tolerance_plus_noise():
    gate = DataGateConfig(max_class_share_change=0.5, max_class_share_shift=0.1)
    low, high = class_share_bounds(0.02, gate, rows=10**9)  # rare class: relative wins
    assert (low, high) == (pytest.approx(0.01, abs=1e-4), pytest.approx(0.03, abs=1e-4))
    low, high = class_share_bounds(0.5, gate, rows=10**9)  # balanced: absolute wins
    assert (low, high) == (pytest.approx(0.4, abs=1e-4), pytest.approx(0.6, abs=1e-4))
    small_low, small_high = class_share_bounds(0.5, gate, rows=100)  # small data: wider
    assert small_low < 0.4 - 0.1 and small_high > 0.6 + 0.1


def test_the_derived_suite_is_valid_gx(reference_rows):
    import great_expectations as gx

    dataset = make_dataset()
    profile = profile_reference(to_validation_frame(reference_rows, dataset), dataset, 1000)
    suite = derive_suite(profile, DataGateConfig(), DATA) | {"name": "toy-suite"}
    parsed = gx.ExpectationSuite(**suite)
    assert len(parsed.expectations) == len(suite["expectations"])
    assert parsed.expectations[0].meta["check"] == "table.columns"


def test_suite_json_is_plain(reference_rows):
    import json

    dataset = make_dataset()
    profile = profile_reference(to_validation_frame(reference_rows, dataset), dataset, 1000)
    suite = derive_suite(profile, DataGateConfig(), DATA)
    assert json.loads(json.dumps(suite)) == suite  # storable as-is beside the dataset


def test_frame_with_timezone_is_validated_as_naive_utc():
    rows = split_rows(5)
    rows["when"] = rows["when"].dt.tz_localize("Europe/Paris")
    frame = to_validation_frame(rows, make_dataset())
    assert not isinstance(frame["when"].dtype, pd.DatetimeTZDtype)
