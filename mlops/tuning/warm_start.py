"""Warm start: the best configurations of the most similar past datasets begin a search.

Every trial of every search is kept (the trial store, ``infra/allocator/tuning_history.py``)
with its dataset's meta-features, the ones the allocator sizes clusters by
(:class:`~mlops.dataset.MetaFeatures`). A new search ranks the past datasets of the same task
and model family by their distance to its own dataset and starts with the best configuration
of each of the nearest ``training.tuning.warm_start_datasets``, clipped into its space.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from prefect_mlops.mlops.dataset import MetaFeatures
from prefect_mlops.mlops.training_config import SearchRange

from .space import Params, clip_to_space

TrialStatus = Literal["success", "failed", "out-of-memory", "killed", "timeout"]


class PastTrial(BaseModel):
    """One trial as the trial store keeps it: the dataset, the configuration, the outcome."""

    model_config = ConfigDict(extra="forbid")

    trial_id: str = Field(default_factory=lambda: uuid.uuid4().hex, max_length=64)
    recorded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    search_id: str = Field(max_length=64, description="The search the trial belonged to.")
    number: int = Field(ge=1, description="Its place in its search, from 1.")
    origin: str = Field(max_length=128, description="warm start (from which dataset), ...")
    use_case: str = Field(min_length=1, max_length=128)
    dataset_version: str = Field(min_length=1, max_length=128)
    family: str = Field(max_length=64)
    meta: MetaFeatures
    params: dict[str, float | int]
    status: TrialStatus
    validation_loss: float | None = Field(default=None, description="Lower is better.")
    loss_name: str = Field(max_length=32, description="log_loss or rmse.")
    best_iteration: int | None = None
    wall_time_s: float = Field(ge=0)
    cores: int = Field(ge=1, description="Threads the trial trained on.")
    error: str | None = None

    @property
    def dataset_key(self) -> tuple[str, str]:
        """The use case and dataset version the trial trained on."""
        return self.use_case, self.dataset_version


class WarmStart(BaseModel):
    """A configuration a search begins with, and where it comes from."""

    params: Params
    use_case: str
    dataset_version: str
    distance: float
    validation_loss: float

    @property
    def origin(self) -> str:
        """Words for the trial's origin, e.g. ``warm start: fraud@3f2a91c0``."""
        return f"warm start: {self.use_case}@{self.dataset_version[:8]}"


def meta_vector(meta: MetaFeatures) -> np.ndarray:
    """A dataset's meta-features on comparable scales (about one unit from small to large).

    Size (log rows, log features), the share of categorical features and how many values they
    take, missing cells, and for classification the class count and the smallest class's share.
    """
    features = max(meta.n_features, 1)
    minority = meta.minority_class_fraction
    return np.array(
        [
            math.log10(max(meta.n_rows, 1)),
            math.log10(features),
            meta.n_categorical / features,
            math.log10(1 + meta.max_cardinality) / 2,
            meta.sparsity,
            math.log2(max(meta.n_classes, 1)) / 2,
            math.log10(minority) / 2 if minority else 0.0,
        ]
    )


def meta_distance(a: MetaFeatures, b: MetaFeatures) -> float:
    """Euclidean distance between two datasets' meta-feature vectors."""
    return float(np.linalg.norm(meta_vector(a) - meta_vector(b)))


def best_per_dataset(trials: Iterable[PastTrial]) -> dict[tuple[str, str], PastTrial]:
    """The successful trial of least validation loss, per dataset."""
    best: dict[tuple[str, str], PastTrial] = {}
    for trial in trials:
        if trial.status != "success" or not _finite(trial.validation_loss):
            continue
        held = best.get(trial.dataset_key)
        if held is None or trial.validation_loss < held.validation_loss:
            best[trial.dataset_key] = trial
    return best


def warm_start_configurations(
    meta: MetaFeatures,
    family: str,
    past: Sequence[PastTrial],
    count: int,
    space: Mapping[str, SearchRange],
    fallback: Mapping[str, Any],
) -> list[WarmStart]:
    """The best configurations of the ``count`` past datasets nearest to ``meta``.

    Args:
        meta: The meta-features of the dataset about to be searched.
        family: Its model family: only trials of that family count.
        past: Past trials (any datasets, any outcome).
        count: How many datasets lend their best configuration.
        space: The search space the configurations are clipped into.
        fallback: Values for parameters of the space a past trial did not search.

    Returns:
        Nearest first; a configuration two datasets share after clipping appears once.
    """
    alike = [t for t in past if t.family == family and t.meta.task == meta.task]
    ranked = sorted(
        best_per_dataset(alike).values(),
        key=lambda t: (meta_distance(meta, t.meta), t.validation_loss),
    )
    starts: list[WarmStart] = []
    for trial in ranked:
        if len(starts) >= count:
            break
        params = clip_to_space(trial.params, space, fallback)
        if any(params == start.params for start in starts):
            continue
        starts.append(
            WarmStart(
                params=params,
                use_case=trial.use_case,
                dataset_version=trial.dataset_version,
                distance=meta_distance(meta, trial.meta),
                validation_loss=trial.validation_loss,
            )
        )
    return starts


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
