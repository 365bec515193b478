"""Hyperparameter tuning (``training.tuning``): an Optuna search warm-started from past datasets.

- :mod:`.space`: sampling a trial's parameters, clipping foreign ones into the space.
- :mod:`.warm_start`: the trial store's rows, dataset similarity, the configurations a search
  begins with.
- :mod:`.search`: the study, its budget, failed trials, the best trial's config.
- :mod:`.trial`: one trial run in this process (on a Dask worker, or in the benchmark).

No Prefect, Dask or MLflow here: the train stage (``tasks/tuning.py``) runs the trials on its
cluster and logs them; ``docs/tuning.md`` explains the whole.
"""

from .search import Search, SearchResult, TrialOutcome, TrialRecord, run_in_turn
from .warm_start import PastTrial, WarmStart, warm_start_configurations

__all__ = [
    "PastTrial",
    "Search",
    "SearchResult",
    "TrialOutcome",
    "TrialRecord",
    "WarmStart",
    "run_in_turn",
    "warm_start_configurations",
]
