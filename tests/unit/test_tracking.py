"""The datasets a run logs as inputs: their real column types, read without reading rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from prefect_mlops.mlops.config import parse_config
from prefect_mlops.mlops.dataset import read_split_schema
from prefect_mlops.mlops.schema import source_types
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.model_registry.tracking import column_schema
from prefect_mlops.tasks.preprocessing import build_dataset_version
from prefect_mlops.tasks.tracking import split_dataset


def members_dataset(folder: Path, suffix: str = "parquet"):
    """A tiny dataset version of whole numbers, floats, true/false, text and timestamps."""
    rows = 120
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "id": [f"m{i}" for i in range(rows)],
            "visits": rng.poisson(3, rows),
            "spend": rng.normal(50, 10, rows),
            "member": rng.random(rows) < 0.4,
            "plan": rng.choice(["basic", "pro"], rows),
            "joined": pd.date_range("2024-01-01", periods=rows, freq="D"),
            "churned": [0, 1] * (rows // 2),
        }
    )
    source = folder / f"members.{suffix}"
    frame.to_parquet(source, index=False) if suffix == "parquet" else frame.to_csv(
        source, index=False
    )
    raw = {
        "name": "members",
        "data": {
            "source": str(source),
            "target": "churned",
            "id_column": "id",
            "datetime": ["joined"],
        },
        "model": {"name": "members-model"},
    }
    config = parse_config(raw)
    return build_dataset_version(config, str(folder / "store"), fingerprint_source(config.data))


def colspec_types(schema_json: str) -> dict[str, str]:
    return {c["name"]: c["type"] for c in json.loads(schema_json)["mlflow_colspec"]}


@pytest.mark.parametrize("suffix", ["parquet", "csv"])
def test_a_split_is_logged_with_its_columns_real_types_and_row_count(tmp_path, suffix):
    dataset = members_dataset(tmp_path, suffix)
    logged = split_dataset(dataset, "test")

    assert (logged.name, logged.digest) == ("members-test", dataset.version)
    types = colspec_types(logged.schema)
    assert {k: types[k] for k in ("visits", "spend", "member", "plan", "joined")} == {
        "visits": "long",
        "spend": "double",
        "member": "boolean",
        "plan": "string",
        "joined": "datetime",
    }
    assert types["__target__"] == "double"  # the encoded target, as the files hold it
    assert json.loads(logged.profile) == {"num_rows": dataset.row_counts["test"]}
    assert json.loads(logged.source)["uri"].startswith("file://")


def test_a_version_without_source_types_shows_the_types_its_files_hold(tmp_path):
    dataset = members_dataset(tmp_path).model_copy(update={"source_types": {}})

    types = colspec_types(split_dataset(dataset, "test").schema)

    assert (types["visits"], types["member"], types["plan"]) == ("double", "double", "string")


def test_a_column_empty_in_one_part_takes_its_type_from_the_others(tmp_path):
    dataset = members_dataset(tmp_path)
    folder = tmp_path / "parts"
    folder.mkdir()
    pd.DataFrame({"n": [None, None], "s": ["a", "b"]}).to_parquet(folder / "part-00000.parquet")
    pd.DataFrame({"n": [1, 2], "s": ["c", None]}).to_parquet(folder / "part-00001.parquet")
    parts = dataset.model_copy(update={"split_uris": {"test": str(folder)}})

    schema = read_split_schema(parts, "test")

    assert {f.name: str(f.type) for f in schema} == {"n": "int64", "s": "large_string"}


def test_arrow_types_map_to_mlflow_types():
    columns = pa.schema(
        [
            ("small", pa.int8()),
            ("big", pa.uint64()),
            ("single", pa.float32()),
            ("category", pa.dictionary(pa.int32(), pa.string())),
            ("amount", pa.decimal128(10, 2)),
            pa.field("key", pa.large_string(), nullable=False),
        ]
    )
    schema = column_schema(columns)

    assert [c["type"] for c in schema.to_dict()] == [
        "integer",
        "long",
        "float",
        "string",
        "any",
        "string",
    ]
    assert [c.required for c in schema.inputs] == [False] * 5 + [True]
    assert column_schema(pa.schema([])) is None


def test_the_source_types_of_text_columns_come_from_what_they_hold():
    text = pd.DataFrame(
        {
            "n": ["1", "-2", None],
            "x": ["1.5", "2", None],
            "b": ["TRUE", "false", None],
            "s": ["a", "1", None],
        },
        dtype="string",
    )
    assert source_types(text) == {"n": "integer", "x": "float", "b": "boolean", "s": "string"}
