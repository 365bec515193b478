"""The LightGBM family as the pipeline and the allocator see it (:class:`~mlops.families.ModelFamily`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from distributed import Client

from ...config import TrainingConfig
from ...dataset import DatasetRef
from .. import TrainedModel, TrialResult, boosting_cost_drivers
from .predictor import FAMILY as NAME
from .training import lightgbm_has_cuda, train_lightgbm_on_dask
from .trial import train_lightgbm_trial

logger = logging.getLogger(__name__)


class LightGBMFamily:
    """LightGBM through ``lightgbm.dask``, early stopping on the whole validation split."""

    name = NAME

    def train(
        self,
        client: Client,
        dataset: DatasetRef,
        training: TrainingConfig,
        work_uri: str,
        workers: list[str] | None = None,
    ) -> TrainedModel:
        """Train on the client's workers (see :func:`.training.train_lightgbm_on_dask`)."""
        return train_lightgbm_on_dask(client, dataset, training, work_uri, workers)

    def train_trial(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        dataset: DatasetRef,
        training: TrainingConfig,
        threads: int,
    ) -> TrialResult:
        """A tuning trial in this process (see :func:`.trial.train_lightgbm_trial`)."""
        return train_lightgbm_trial(train, validation, dataset, training, threads)

    def cost_drivers(self, training: TrainingConfig, dataset: DatasetRef) -> dict[str, Any]:
        """The parameters the allocator's LightGBM cost model reads (rounds, tree size, bins)."""
        return boosting_cost_drivers(training)

    def for_gpu(self, training: TrainingConfig) -> TrainingConfig:
        """LightGBM's CUDA device when this build has it; otherwise a warning, and the CPU."""
        if not lightgbm_has_cuda():
            logger.warning(
                "The allocation asks for a GPU but this LightGBM build has no CUDA support: "
                "training on CPU. Run the train-gpu deployment's image for GPU training."
            )
            return training
        extra = training.extra_params | {"device_type": "cuda"}
        return training.model_copy(update={"extra_params": extra})


FAMILY = LightGBMFamily()
