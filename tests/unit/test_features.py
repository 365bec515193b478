import warnings
from datetime import datetime as _dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_mlops.mlops.errors import DataError
from prefect_mlops.mlops.features import (
    FeatureSpec,
    build_feature_matrix,
    build_features,
    fit_feature_spec,
)


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


# ------------------------------------------------------------------ the fast paths agree with pandas

ALL_PARTS = ["year", "month", "day", "dayofweek", "dayofyear", "hour", "minute", "is_weekend"]
WIDE = FeatureSpec(
    numeric=["a", "b"],
    log_transform=["b"],
    datetime=["t"],
    datetime_parts=ALL_PARTS,
    categorical={"c": ["x", "y", "z"]},
)


def pandas_reference(frame: pd.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """The transform written plainly with pandas, as a client's frame would be read."""
    out = {}
    for column in spec.numeric:
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy("float64", na_value=np.nan)
        if column in spec.log_transform:
            out[f"log_{column}"] = np.sign(values) * np.log1p(np.abs(values))
        else:
            out[column] = values
    for column in spec.datetime:
        stamps = pd.to_datetime(frame[column], errors="coerce", utc=True).dt.tz_localize(None)
        for part in spec.datetime_parts:
            value = (
                (stamps.dt.dayofweek >= 5).where(stamps.notna())
                if part == "is_weekend"
                else getattr(stamps.dt, part)
            )
            out[f"{column}_{part}"] = value.astype("float64").to_numpy(na_value=np.nan)
    for column, vocabulary in spec.categorical.items():
        codes = pd.Index(vocabulary, dtype="string").get_indexer(frame[column].astype("string"))
        out[column] = np.where(codes < 0, np.nan, codes)
    return np.column_stack([out[name] for name in spec.feature_names]).astype("float32")


LAYOUTS = [
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%SZ",
    "%Y-%m-%dT%H:%M:%S+05:30",
    "%Y-%m-%dT%H:%M:%S-02:00",
]
stamps = st.datetimes(min_value=_dt(1700, 1, 1), max_value=_dt(2300, 1, 1))
odd_dates = st.sampled_from(
    ["2025-02-30T01:00:00", "2025-13-01T00:00:00", "2025-01-01T24:00:00", "oops", "", "10/24/2025"]
)
numbers = st.one_of(
    st.none(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["1.5", "x", "1e3", " 2 ", "nan", "inf"]),
    st.booleans(),
)
categories = st.one_of(st.none(), st.sampled_from(["x", "y", "z", "w", ""]), st.integers(0, 3))


@st.composite
def date_column(draw, size: int) -> list:
    layout = draw(st.sampled_from(LAYOUTS))  # mostly one layout, sometimes another or junk
    value = st.one_of(
        stamps.map(lambda d: d.strftime(layout)),
        st.none(),
        odd_dates,
        st.tuples(stamps, st.sampled_from(LAYOUTS)).map(lambda p: p[0].strftime(p[1])),
    )
    return draw(st.lists(value, min_size=size, max_size=size))


@st.composite
def request_columns(draw) -> dict[str, list]:
    size = draw(st.integers(1, 6))
    column = lambda values: st.lists(values, min_size=size, max_size=size)  # noqa: E731
    return {
        "a": draw(column(numbers)),
        "b": draw(column(numbers)),
        "t": draw(date_column(size)),
        "c": draw(column(categories)),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(request_columns())
def test_plain_lists_and_frames_give_what_pandas_gives(columns):
    size = len(columns["a"])
    frame = pd.DataFrame(
        [list(row) for row in zip(*columns.values(), strict=True)], columns=list(columns)
    )  # how MLflow builds the frame of a dataframe_split request
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas warns when it cannot infer a date layout
        expected = pandas_reference(frame, WIDE)
        from_lists = build_feature_matrix(columns, size, WIDE)
        from_frame = build_features(frame, WIDE).to_numpy()
    np.testing.assert_array_equal(from_lists, expected)
    np.testing.assert_array_equal(from_frame, expected)


def test_typed_and_zoned_datetime_columns_match_pandas():
    when = pd.Series(pd.date_range("1969-12-30", periods=500, freq="37h"))
    frame = pd.DataFrame(
        {
            "a": np.arange(500.0),
            "b": np.linspace(-5, 5, 500),
            "t": when.dt.tz_localize("Europe/Paris", ambiguous="NaT", nonexistent="NaT"),
            "c": pd.Categorical(np.resize(["x", "y", "w", None], 500)),
        }
    )
    np.testing.assert_array_equal(
        build_features(frame, WIDE).to_numpy(), pandas_reference(frame, WIDE)
    )


def test_booleans_are_read_as_ones_and_zeros_however_they_come():
    spec = FeatureSpec(
        numeric=["member"], log_transform=[], datetime=[], datetime_parts=[], categorical={}
    )
    expected = [1.0, 0.0, 1.0]
    for column in (
        [True, False, True],  # JSON
        pd.Series([True, False, True]),  # pandas' bool column
        pd.Series(["True", "false", " TRUE "], dtype="string"),  # a CSV read as text
        pd.Series([True, 0, 1.0], dtype=object),
    ):
        assert build_feature_matrix({"member": column}, 3, spec)[:, 0].tolist() == expected
    assert np.isnan(build_feature_matrix({"member": ["yes"]}, 1, spec)[0, 0])


def test_categories_of_numeric_codes_are_named():
    spec = FeatureSpec(
        numeric=[],
        log_transform=[],
        datetime=[],
        datetime_parts=[],
        categorical={"store": ["3", "12"], "plan": ["basic", "7"]},
    )
    assert spec.numbered_categories == ["store"]
    codes = build_feature_matrix({"store": [12, 3, 5], "plan": ["7", None, "x"]}, 3, spec)
    assert codes[:2, 0].tolist() == [1.0, 0.0] and np.isnan(codes[2, 0])
