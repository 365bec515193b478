import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.config import DataConfig, FeatureConfig, SplitConfig
from prefect_mlops.mlops.dataset import SPLIT_COLUMN
from prefect_mlops.mlops.errors import DataError
from prefect_mlops.mlops.schema import coerce_frame, encode_target, infer_schema, infer_task
from prefect_mlops.mlops.source import detect_format
from prefect_mlops.tasks.preprocessing import assign_split, check_columns_usable


@pytest.fixture
def sample():
    n = 40
    return pd.DataFrame(
        {
            "id": [f"row-{i}" for i in range(n)],
            "amount": np.linspace(1, 100, n),
            "count_text": [str(i) for i in range(n)],
            "when": pd.date_range("2025-01-01", periods=n, freq="h").astype(str),
            "color": ["red", "blue"] * (n // 2),
            "note": [f"free text {i}" for i in range(n)],
            "y": [0, 1] * (n // 2),
        }
    )


def test_infer_schema_types_each_column(sample):
    schema = infer_schema(sample, DataConfig(source="x", target="y"), FeatureConfig())
    assert schema.numeric == ["amount", "count_text"]
    assert schema.datetime == ["when"]
    assert schema.categorical == ["color"]
    assert set(schema.dropped) == {"id", "note"}  # identifiers: a distinct value on every row
    assert "identifier" in schema.dropped["note"]


def test_declared_columns_win(sample):
    data = DataConfig(
        source="x", target="y", id_column="id", categorical=["count_text"], datetime=["when"]
    )
    schema = infer_schema(sample, data, FeatureConfig())
    assert "count_text" in schema.categorical
    assert schema.key_columns == ["id"]
    assert schema.dropped["id"] == "row identifier (data.id_column)"


def test_missing_target_lists_available_columns(sample):
    with pytest.raises(DataError) as error:
        infer_schema(sample, DataConfig(source="x", target="label"), FeatureConfig())
    assert "['label']" in str(error.value) and "data.target" in str(error.value)
    assert "'amount'" in str(error.value)


def test_coerce_frame_types_and_drops_null_targets(sample):
    schema = infer_schema(sample, DataConfig(source="x", target="y"), FeatureConfig())
    frame = sample.assign(y=[None, 1] + [0, 1] * 19)
    typed = coerce_frame(frame, schema)
    assert len(typed) == len(frame) - 1
    assert typed["count_text"].dtype == "float64"
    assert pd.api.types.is_datetime64_any_dtype(typed["when"])
    assert "note" not in typed.columns
    assert frame["count_text"].dtype != "float64"  # input untouched


def test_true_false_text_is_a_numeric_column_as_pandas_reads_it():
    # a CSV read as text (as the pipeline reads it) and the same file read by pandas (bool)
    text = pd.DataFrame(
        {"member": ["True", "false", "TRUE", None] * 5, "y": [0, 1] * 10}, dtype="string"
    )
    schema = infer_schema(text, DataConfig(source="x", target="y"), FeatureConfig())
    assert schema.numeric == ["member"]
    typed = coerce_frame(text, schema)
    assert typed["member"].head(4).tolist()[:3] == [1.0, 0.0, 1.0]
    assert np.isnan(typed["member"].iloc[3])
    read_by_pandas = pd.DataFrame({"member": [True, False] * 10, "y": [0, 1] * 10})
    assert infer_schema(
        read_by_pandas, DataConfig(source="x", target="y"), FeatureConfig()
    ).numeric == ["member"]
    yes_no = text.assign(member=["yes", "no"] * 10)  # not how pandas reads booleans: categories
    assert infer_schema(
        yes_no, DataConfig(source="x", target="y"), FeatureConfig()
    ).categorical == ["member"]


def test_split_is_deterministic_and_order_independent():
    frame = pd.DataFrame({"k": [f"id{i}" for i in range(5000)], "v": range(5000)})
    split = SplitConfig(validation_fraction=0.2, test_fraction=0.1, seed=3)
    first = assign_split(frame, ["k"], split)
    shuffled = frame.sample(frac=1, random_state=0)
    again = assign_split(shuffled, ["k"], split)
    pd.testing.assert_series_equal(first, again.loc[first.index])
    shares = first.value_counts(normalize=True)
    assert abs(shares["validation"] - 0.2) < 0.03 and abs(shares["test"] - 0.1) < 0.03
    other_seed = assign_split(
        frame, ["k"], SplitConfig(validation_fraction=0.2, test_fraction=0.1, seed=4)
    )
    assert (other_seed != first).mean() > 0.2
    assert first.name == SPLIT_COLUMN


def test_infer_task():
    assert infer_task(pd.Series([5, 3], index=["no", "yes"]), False, None, "t") == (
        "binary",
        ["no", "yes"],
    )
    assert infer_task(pd.Series([5, 3], index=[1, 0]), True, None, "t") == ("binary", ["0", "1"])
    task, classes = infer_task(pd.Series([1, 1, 1], index=["a", "c", "b"]), False, None, "t")
    assert (task, classes) == ("multiclass", ["a", "b", "c"])
    assert infer_task(pd.Series([1] * 50, index=np.linspace(0, 1, 50)), True, None, "t") == (
        "regression",
        None,
    )


def test_single_class_target_is_refused():
    with pytest.raises(DataError, match="'fraud' has 1 distinct value"):
        infer_task(pd.Series([10], index=[0]), True, None, "fraud")


def test_declared_task_must_fit_target():
    with pytest.raises(DataError, match="needs 2 classes"):
        infer_task(pd.Series([1, 1, 1], index=["a", "b", "c"]), False, "binary", "t")
    with pytest.raises(DataError, match="numeric target"):
        infer_task(pd.Series([1, 1], index=["a", "b"]), False, "regression", "t")


def test_encode_target_matches_class_order():
    assert list(encode_target(pd.Series(["b", "a", None]), "multiclass", ["a", "b"])) == [
        1.0,
        0.0,
        -1.0,
    ]
    assert list(encode_target(pd.Series([1.0, 0.0]), "binary", ["0", "1"])) == [1.0, 0.0]
    assert list(encode_target(pd.Series(["1", "0"]), "binary", ["0", "1"])) == [1.0, 0.0]


def test_all_null_column_is_named():
    with pytest.raises(DataError, match=r"\['empty'\].*entirely null"):
        check_columns_usable(pd.Series({"ok": 1, "empty": 10}), 10, "data.csv")


def test_detect_format():
    assert detect_format("s3://bucket/x.CSV", "auto") == "csv"
    assert detect_format("/data/folder/", "auto") == "parquet"
    assert detect_format("x.txt", "csv") == "csv"
