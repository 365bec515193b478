"""The XGBoost family as the pipeline and the allocator see it (:class:`~mlops.families.ModelFamily`)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from distributed import Client

from ...config import TrainingConfig
from ...dataset import DatasetRef
from .. import TrainedModel, TrialResult, boosting_cost_drivers
from .predictor import FAMILY as NAME
from .training import train_xgboost_on_dask, train_xgboost_trial, xgboost_has_cuda

logger = logging.getLogger(__name__)


class XGBoostFamily:
    """XGBoost through ``xgboost.dask`` (histogram trees grown leaf-wise, as LightGBM grows
    them), early stopping on the whole validation split."""

    name = NAME

    def train(
        self,
        client: Client,
        dataset: DatasetRef,
        training: TrainingConfig,
        work_uri: str,
        workers: list[str] | None = None,
    ) -> TrainedModel:
        """Train on the client's workers (see :func:`.training.train_xgboost_on_dask`)."""
        return train_xgboost_on_dask(client, dataset, training, work_uri, workers)

    def train_trial(
        self,
        train: pd.DataFrame,
        validation: pd.DataFrame,
        dataset: DatasetRef,
        training: TrainingConfig,
        threads: int,
    ) -> TrialResult:
        """A tuning trial in this process (see :func:`.training.train_xgboost_trial`)."""
        return train_xgboost_trial(train, validation, dataset, training, threads)

    def cost_drivers(self, training: TrainingConfig, dataset: DatasetRef) -> dict[str, Any]:
        """Rounds, tree size (``max_leaves``) and histogram bins, under the job fields'
        (LightGBM's) names."""
        return boosting_cost_drivers(training)

    def for_gpu(self, training: TrainingConfig) -> TrainingConfig:
        """XGBoost's CUDA device when this build has it; otherwise a warning, and the CPU."""
        if not xgboost_has_cuda():
            logger.warning(
                "The allocation asks for a GPU but this XGBoost build (xgboost-cpu) has no CUDA "
                "support: training on CPU. Run the train-gpu deployment's image for GPU training."
            )
            return training
        extra = training.extra_params | {"device": "cuda"}
        return training.model_copy(update={"extra_params": extra})


FAMILY = XGBoostFamily()
