"""Errors a user can act on. The CLI prints their message as one paragraph and exits non-zero.

The exit code says whose move it is:

- 2, :class:`MlopsError` and most subclasses: bad input the user controls (config, data,
  settings); fix it and run again.
- 1, :class:`EnvironmentFailure`: the input was fine but something the run depends on is not
  (storage, a server, a worker, a process that died); 1 is also what any unexpected error exits with.
- 3 and 4: verdicts on the candidate (rejected by the model gate, rolled back by the deploy stage).
"""

from __future__ import annotations


class MlopsError(Exception):
    """Base class for errors a user can act on; by default caused by input they control."""

    exit_code = 2


class ConfigError(MlopsError):
    """The configuration file is missing, malformed, or has an unknown key or a wrong type."""


class DataError(MlopsError):
    """The data source is missing, unreadable, or unusable for the declared task."""


class DataValidationError(MlopsError):
    """A new dataset version failed the data gate; nothing was trained on it."""


class PromotionConflict(MlopsError):
    """Another promotion moved the champion while this one was being decided."""

    exit_code = 3


class EnvironmentFailure(MlopsError):
    """Not the input: storage, a server or a process the run depends on failed or is missing."""

    exit_code = 1


class StorageError(EnvironmentFailure):
    """A store the pipeline writes to (the artifact store) cannot be written."""
