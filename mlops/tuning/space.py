"""The search space of ``training.tuning``: a trial's parameters sampled, foreign ones clipped in.

A space maps :data:`~mlops.training_config.TUNABLE_PARAMETERS` to ranges
(:class:`~mlops.training_config.SearchRange`); the integer parameters are searched over the
integers of their range. A trial's parameters replace the config's values of the same names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution

from prefect_mlops.mlops.training_config import INTEGER_PARAMETERS, SearchRange, TrainingConfig

Params = dict[str, float | int]
"""A trial's parameters: name -> value, integers for the integer parameters."""


def integer_bounds(search: SearchRange) -> tuple[int, int]:
    """The lowest and highest integer inside a range."""
    return math.ceil(search.low), math.floor(search.high)


def distributions(space: Mapping[str, SearchRange]) -> dict[str, BaseDistribution]:
    """Optuna's distribution of each parameter of the space."""
    out: dict[str, BaseDistribution] = {}
    for name, search in space.items():
        if name in INTEGER_PARAMETERS:
            low, high = integer_bounds(search)
            out[name] = IntDistribution(low, high, log=search.log)
        else:
            out[name] = FloatDistribution(search.low, search.high, log=search.log)
    return out


def suggest_params(trial: optuna.Trial, space: Mapping[str, SearchRange]) -> Params:
    """Sample one value per parameter of the space (an enqueued trial gets its fixed values)."""
    params: Params = {}
    for name, search in space.items():
        if name in INTEGER_PARAMETERS:
            low, high = integer_bounds(search)
            params[name] = trial.suggest_int(name, low, high, log=search.log)
        else:
            params[name] = trial.suggest_float(name, search.low, search.high, log=search.log)
    return params


def clip_to_space(
    params: Mapping[str, Any], space: Mapping[str, SearchRange], fallback: Mapping[str, Any]
) -> Params:
    """``params`` moved into the space: each value clamped into its range (integer parameters
    rounded); a parameter of the space that ``params`` lacks, or holds no number for, takes
    ``fallback``'s value, clamped too. Parameters outside the space are dropped."""
    clipped: Params = {}
    for name, search in space.items():
        value = params.get(name)
        if not _is_number(value):
            value = fallback[name]
        if name in INTEGER_PARAMETERS:
            low, high = integer_bounds(search)
            clipped[name] = int(min(max(round(float(value)), low), high))
        else:
            clipped[name] = float(min(max(float(value), search.low), search.high))
    return clipped


def configured_params(training: TrainingConfig) -> Params:
    """The config's own values of the space's parameters, clipped into the space."""
    own = {name: getattr(training, name) for name in training.tuning.space}
    return clip_to_space(own, training.tuning.space, own)


def with_params(training: TrainingConfig, params: Mapping[str, Any]) -> TrainingConfig:
    """The training config with a trial's parameters in place of its own (validated)."""
    return TrainingConfig.model_validate(training.model_dump() | dict(params))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
