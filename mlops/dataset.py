"""The small typed references stages pass to each other: URIs and facts, never data."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from mlops.config import TaskType
from mlops.features import FeatureSpec

TARGET_COLUMN = "__target__"
"""Encoded target in the split files: class index for classification, the value for regression."""

SPLITS = ("train", "validation", "test")


class MetaFeatures(BaseModel):
    """Dataset facts that drive training cost; the allocator learns from these."""

    model_config = ConfigDict(extra="forbid")

    n_rows: int = Field(description="Rows in the training split.")
    n_features: int
    n_numeric: int
    n_categorical: int
    n_datetime: int
    bytes_in_memory: int = Field(description="Training split, raw columns, as pandas holds them.")
    max_cardinality: int
    mean_cardinality: float
    sparsity: float = Field(description="Share of missing cells in the raw feature columns.")
    task: TaskType
    n_classes: int = Field(description="0 for regression.")
    minority_class_fraction: float | None = None


class DatasetRef(BaseModel):
    """A preprocessed dataset version: where its splits are and what is in them."""

    model_config = ConfigDict(extra="forbid")

    name: str
    version: str = Field(description="Content hash of source + preprocessing settings.")
    uri: str
    source_uri: str
    target: str
    task: TaskType
    classes: list[str] | None = Field(default=None, description="Class labels, index = code.")
    feature_spec: FeatureSpec
    split_uris: dict[str, str]
    row_counts: dict[str, int]
    dropped_columns: dict[str, str] = Field(default_factory=dict, description="column -> why")
    profile: dict[str, Any]
    meta_features: MetaFeatures

    @property
    def n_classes(self) -> int:
        """Number of classes, 0 for regression."""
        return len(self.classes) if self.classes else 0

    @property
    def sample_uri(self) -> str:
        """A few raw rows (the model's input example)."""
        return f"{self.uri}/sample.parquet"
