"""Small typed frames shaped like the preprocessed split files, and their dataset references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.dataset import TARGET_COLUMN, DatasetRef, MetaFeatures
from prefect_mlops.mlops.features import FeatureSpec


def make_dataset(version: str = "ref", classes: list[str] | None = None) -> DatasetRef:
    """A reference for a binary use case: amount (numeric), city (categorical), when (datetime)."""
    spec = FeatureSpec(
        numeric=["amount"],
        log_transform=[],
        datetime=["when"],
        datetime_parts=["month"],
        categorical={"city": ["lyon", "paris", "nantes"]},
    )
    meta = MetaFeatures(
        n_rows=1, n_features=3, n_numeric=1, n_categorical=1, n_datetime=1, bytes_in_memory=1,
        max_cardinality=3, mean_cardinality=3.0, sparsity=0.0, task="binary", n_classes=2,
    )  # fmt: skip
    return DatasetRef(
        name="toy",
        version=version,
        uri=f"/nowhere/{version}",
        source_uri="toy.csv",
        target="label",
        task="binary",
        classes=classes or ["no", "yes"],
        feature_spec=spec,
        split_uris={},
        row_counts={"train": 1, "validation": 0, "test": 0},
        profile={},
        meta_features=meta,
    )


def split_rows(n: int, seed: int = 0, positive_share: float = 0.2) -> pd.DataFrame:
    """Rows as the split files hold them: typed columns, a row key and the encoded target."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "row_id": pd.array([f"r{seed}-{i}" for i in range(n)], dtype="string"),
            "amount": rng.normal(100.0, 10.0, n),
            "city": pd.array(rng.choice(["lyon", "paris", "nantes"], n), dtype="string"),
            "when": pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 90, n), unit="D"),
            "label": rng.choice(["no", "yes"], n),
            TARGET_COLUMN: (rng.random(n) < positive_share).astype("float64"),
        }
    )


@pytest.fixture
def reference_rows() -> pd.DataFrame:
    return split_rows(2000, seed=1)
