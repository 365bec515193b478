"""The search: Optuna's seeded TPE over ``training.tuning.space``, asked and told one trial at a time.

:class:`Search` holds the study and the budget; whoever runs the trials drives it: ask for a
trial's config, train it wherever (in this process, a Dask worker, the whole cluster), tell
the outcome. :func:`run_in_turn` is the simplest driver. The first trials are fixed: the
warm-start configurations (nearest past datasets first), then the config's own parameters, so
the best trial is never worse on validation than training without tuning. The search stops
starting trials at ``trials``, or once ``budget_core_seconds`` are spent (finished trials'
wall time x their threads). A trial that fails is told as failed (Optuna's ``FAIL`` state,
our record with its status and error) and the search goes on.
"""

from __future__ import annotations

import logging
import math
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import optuna
from pydantic import BaseModel, Field

from prefect_mlops.mlops.training_config import TrainingConfig

from .space import (
    Params,
    clip_to_space,
    configured_params,
    distributions,
    suggest_params,
    with_params,
)
from .warm_start import TrialStatus, WarmStart

STARTUP_TRIALS = 5
"""Trials TPE samples at random before it models the results (fixed, so that a search of N
trials is the start of a longer one with the same seed)."""
CONFIGURED = "configured parameters"
SEARCHED = "search"


class TrialOutcome(BaseModel):
    """What running one trial gave: its loss when it trained, or how it failed."""

    status: TrialStatus
    validation_loss: float | None = None
    best_iteration: int | None = None
    wall_time_s: float = Field(ge=0, description="The trial's run: data, features, training.")
    threads: int = Field(ge=1, description="Threads it trained on (its core-seconds' cores).")
    started_at: datetime
    ended_at: datetime
    where: str | None = Field(default=None, description="The worker it ran on, if any.")
    error: str | None = None


class TrialRecord(TrialOutcome):
    """One trial of a search: its place, its parameters and where they came from."""

    number: int = Field(ge=1)
    params: Params
    origin: str = Field(description="warm start: <dataset>, configured parameters, or search.")

    @property
    def core_seconds(self) -> float:
        """What the trial cost: wall time x threads."""
        return self.wall_time_s * self.threads


class SearchResult(BaseModel):
    """A finished search: every trial, the best, and the config that trains the candidate."""

    search_id: str
    trials: list[TrialRecord]
    best: TrialRecord | None = Field(description="None when no trial succeeded.")
    training: TrainingConfig = Field(
        description="The best trial's config; the config as given when no trial succeeded."
    )
    warm_started: int = Field(description="Trials that came from past datasets.")
    stopped: Literal["trials", "budget"]
    core_seconds: float

    @property
    def failed(self) -> int:
        """Trials that did not train."""
        return sum(t.status != "success" for t in self.trials)


@dataclass(frozen=True)
class PendingTrial:
    """A trial asked for and not yet told."""

    number: int
    params: Params
    origin: str
    training: TrainingConfig
    trial: optuna.Trial


class Search:
    """An Optuna study over the training config's space, with warm start and budget.

    Args:
        training: The use case's training config; its ``tuning`` section is the search's.
        warm_start: Configurations to try first (see
            :func:`mlops.tuning.warm_start.warm_start_configurations`).
        known: Configurations already judged on this very dataset (earlier searches of the
            same dataset version) with their validation loss: the sampler learns from them
            without running them again; they are not trials of this search.
        seed: The sampler's seed (default ``tuning.seed``); a search repeated on the same
            dataset is given another, so that it does not draw the same configurations.
    """

    def __init__(
        self,
        training: TrainingConfig,
        warm_start: Sequence[WarmStart] = (),
        known: Sequence[tuple[Mapping[str, Any], float]] = (),
        seed: int | None = None,
    ) -> None:
        self.training = training
        self.tuning = training.tuning
        self.search_id = uuid.uuid4().hex
        optuna.logging.set_verbosity(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.tuning.seed if seed is None else seed,
                n_startup_trials=STARTUP_TRIALS,
                multivariate=True,
            )
        self.study = optuna.create_study(direction="minimize", sampler=sampler)
        space = distributions(self.tuning.space)
        for params, loss in known:
            self.study.add_trial(
                optuna.trial.create_trial(
                    params=clip_to_space(params, self.tuning.space, configured_params(training)),
                    distributions=space,
                    value=loss,
                )
            )
        fixed = [(start.params, start.origin) for start in warm_start]
        own = configured_params(training)
        if all(own != params for params, _ in fixed):
            fixed.append((own, CONFIGURED))
        for params, origin in fixed:
            self.study.enqueue_trial(params, user_attrs={"origin": origin})
        self.warm_start = list(warm_start)
        self.records: list[TrialRecord] = []
        self.started = 0

    @property
    def core_seconds(self) -> float:
        """Core-seconds the finished trials spent."""
        return sum(r.core_seconds for r in self.records)

    @property
    def budget_spent(self) -> bool:
        """Whether the core-second budget (if any) is spent."""
        budget = self.tuning.budget_core_seconds
        return budget is not None and self.core_seconds >= budget

    def ask(self) -> PendingTrial | None:
        """The next trial to run, or None once ``trials`` were started or the budget is spent."""
        if self.started >= self.tuning.trials or self.budget_spent:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            trial = self.study.ask()
            params = suggest_params(trial, self.tuning.space)
        self.started += 1
        origin = trial.user_attrs.get("origin", SEARCHED)
        return PendingTrial(self.started, params, origin, with_params(self.training, params), trial)

    def tell(self, pending: PendingTrial, outcome: TrialOutcome) -> TrialRecord:
        """Record a trial's outcome; a failed trial (or a loss that is not a number) is told
        to Optuna as failed, and the search goes on."""
        loss = outcome.validation_loss
        if outcome.status == "success" and (loss is None or not math.isfinite(loss)):
            outcome = outcome.model_copy(
                update={"status": "failed", "error": f"validation loss is {loss}"}
            )
        if outcome.status == "success":
            self.study.tell(pending.trial, loss)
        else:
            self.study.tell(pending.trial, state=optuna.trial.TrialState.FAIL)
        record = TrialRecord(
            **outcome.model_dump(),
            number=pending.number,
            params=pending.params,
            origin=pending.origin,
        )
        self.records.append(record)
        return record

    def result(self) -> SearchResult:
        """The search so far: every told trial, the best, and its config."""
        trials = sorted(self.records, key=lambda r: r.number)
        succeeded = [r for r in trials if r.status == "success"]
        best = min(succeeded, key=lambda r: (r.validation_loss, r.number), default=None)
        return SearchResult(
            search_id=self.search_id,
            trials=trials,
            best=best,
            training=with_params(self.training, best.params) if best else self.training,
            warm_started=sum(r.origin.startswith("warm start") for r in trials),
            stopped="budget" if self.budget_spent else "trials",
            core_seconds=self.core_seconds,
        )


def run_in_turn(
    search: Search,
    run_trial: Callable[[TrainingConfig], TrialOutcome],
    on_trial: Callable[[TrialRecord], None] | None = None,
) -> SearchResult:
    """Run the search's trials one after another with ``run_trial``.

    Args:
        search: The search to drive.
        run_trial: Trains one config and says how it went (never raises for a failed trial).
        on_trial: Called with each trial's record as soon as it is told (e.g. to store it).

    Returns:
        The finished search.
    """
    while (pending := search.ask()) is not None:
        record = search.tell(pending, run_trial(pending.training))
        if on_trial is not None:
            on_trial(record)
    return search.result()
