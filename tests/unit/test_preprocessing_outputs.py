"""Preprocessing writes the same dataset version, byte for byte in content, as it always has.

The digests below were recorded from the Dask implementation of the preprocess stage (before it
read Parquet with Arrow and typed each partition once); any change to the rows in a split, their
order, the split files' column types or the :class:`DatasetRef` (version, counts, profile,
schema, source types, meta-features) changes a digest. Re-record only for an intended change of
the preprocessing rules (and bump ``PREPROCESSING_VERSION``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from prefect_mlops.mlops.config import DataConfig, PipelineConfig
from prefect_mlops.mlops.dataset import SPLITS, DatasetRef, read_split, read_split_schema
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.synthetic import write_dataset
from prefect_mlops.tasks.preprocessing import build_dataset_version


def split_digest(dataset: DatasetRef, split: str) -> str:
    """The rows of one split in order, their dtypes, the files' Arrow types and file names."""
    frame = read_split(dataset, split)
    files = sorted(p.name for p in Path(dataset.split_uris[split]).glob("*.parquet"))
    digest = hashlib.sha256()
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    digest.update(str(frame.dtypes.to_dict()).encode())
    digest.update(read_split_schema(dataset, split).to_string(show_schema_metadata=True).encode())
    digest.update(str(files).encode())
    return digest.hexdigest()[:16]


def reference_digest(dataset: DatasetRef) -> str:
    """The reference without what depends on where the test runs: the paths, and the version
    (a hash of the source's bytes and of the config, whose ``data.source`` is a path)."""
    exclude = {"version", "uri", "source_uri", "split_uris"}
    fields = dataset.model_dump(mode="json", exclude=exclude)
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def config_for(source: Path, **data) -> PipelineConfig:
    return PipelineConfig(
        name="pinned",
        data=DataConfig(source=str(source), **data),
        model={"name": "pinned-model"},
    )


CASES = {
    # declared categorical and datetime columns, missing values, six classes, 3 row groups
    "car_parquet": (
        "car_dealership",
        "car.parquet",
        {
            "target": "segment",
            "id_column": "customer_id",
            "datetime": ["visit_date"],
            "categorical": ["region", "previous_segment", "preferred_fuel"],
        },
    ),
    # a CSV read as text in several blocks, every column type inferred
    "car_csv": ("car_dealership", "car.csv", {"target": "segment", "blocksize": "100KB"}),
    # the benchmark's generator, binary and imbalanced, as the bundled config declares it
    "fraud_parquet": (
        "fraud",
        "fraud.parquet",
        {
            "target": "is_fraud",
            "task": "binary",
            "id_column": "transaction_id",
            "datetime": ["transaction_time"],
        },
    ),
}

RECORDED = {  # from the Dask implementation (commit 9d912ea)
    "car_csv": {
        "source": "064f639dac9ec040",
        "reference": "b96c5eab1f14c946",
        "train": "5473ab747c7e0ebe",
        "validation": "9a343b310ab81d81",
        "test": "d36d99146d791288",
    },
    "car_parquet": {
        "source": "d14e26d50d059131",
        "reference": "f5d0ef8b0e662fac",
        "train": "3abf6b8267340b66",
        "validation": "b8bb17fc08198773",
        "test": "63cc64131a9be732",
    },
    "fraud_parquet": {
        "source": "db38d50b903d93dc",
        "reference": "dfdfb21232c60cf2",
        "train": "6f400e0707d755e4",
        "validation": "94a677cfbcc20d78",
        "test": "c521c45338b1c545",
    },
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dataset_version_is_unchanged(case, tmp_path):
    assert digests(case, tmp_path) == RECORDED[case]


def digests(case: str, folder: Path) -> dict[str, str]:
    """Preprocess a small generated source of ``case``; the digests of what was written."""
    generator, name, data = CASES[case]
    source = write_dataset(generator, 6000, folder / name, seed=5, chunk_rows=2000)
    config = config_for(source, **data)
    fingerprint = fingerprint_source(config.data)
    dataset = build_dataset_version(config, str(folder / "store"), fingerprint)
    return {
        "source": fingerprint[:16],
        "reference": reference_digest(dataset),
        **{split: split_digest(dataset, split) for split in SPLITS},
    }
