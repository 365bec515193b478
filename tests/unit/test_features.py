import numpy as np
import pandas as pd
import pytest

from mlops.errors import DataError
from mlops.features import build_features, fit_feature_spec


@pytest.fixture
def spec():
    return fit_feature_spec(
        numeric=["amount", "age"],
        datetime=["when"],
        category_counts={"color": {"red": 5, "blue": 9, "green": 1}},
        log_transform=["amount"],
        datetime_parts=["hour", "dayofweek", "is_weekend"],
        max_categories=2,
    )


@pytest.fixture
def raw():
    return pd.DataFrame(
        {
            "amount": [0.0, 9.0, -9.0, None],
            "age": ["30", "x", "41", "50"],
            "when": ["2025-03-01 13:00:00", "2025-03-03 02:30:00", None, "not a date"],
            "color": ["blue", "red", "green", None],
            "ignored": [1, 2, 3, 4],
        }
    )


def test_vocabulary_keeps_most_frequent_in_stable_order(spec):
    assert spec.categorical == {"color": ["blue", "red"]}
    assert spec.feature_names == [
        "log_amount",
        "age",
        "when_hour",
        "when_dayofweek",
        "when_is_weekend",
        "color",
    ]
    assert spec.categorical_features == ["color"]


def test_build_features_values(spec, raw):
    out = build_features(raw, spec)
    assert list(out.columns) == spec.feature_names
    assert (out.dtypes == "float32").all()
    np.testing.assert_allclose(
        out["log_amount"].to_numpy()[:3], [0.0, np.log1p(9), -np.log1p(9)], rtol=1e-6
    )
    assert np.isnan(out["log_amount"].iloc[3])
    assert np.isnan(out["age"].iloc[1])  # unparseable number -> missing
    assert out["when_hour"].iloc[0] == 13 and out["when_dayofweek"].iloc[0] == 5
    assert out["when_is_weekend"].iloc[0] == 1 and out["when_is_weekend"].iloc[1] == 0
    assert out["when_hour"].isna().iloc[2:].all()  # missing and unparseable dates
    # vocabulary codes; a rare (dropped) value and a missing one are both missing
    assert out["color"].iloc[0] == 0 and out["color"].iloc[1] == 1
    assert out["color"].isna().iloc[2:].all()


def test_build_features_does_not_mutate_input(spec, raw):
    before = raw.copy()
    build_features(raw, spec)
    pd.testing.assert_frame_equal(raw, before)


def test_missing_columns_are_named(spec, raw):
    with pytest.raises(DataError, match=r"missing columns \['when'\]"):
        build_features(raw.drop(columns=["when"]), spec)


def test_log_transform_of_non_numeric_column_is_refused():
    with pytest.raises(DataError, match="features.log_transform"):
        fit_feature_spec(["a"], [], {"c": {"x": 1}}, ["c"], [], 10)


def test_spec_round_trips_through_json(spec):
    assert type(spec).model_validate_json(spec.model_dump_json()) == spec
