"""Errors a user can act on. The CLI prints their message as one paragraph and exits non-zero.

The exit code says whose move it is (:class:`ExitCode`; docs/cli.md has the table):

- 2, :class:`MlopsError` and most subclasses: bad input the user controls (config, data,
  settings); fix it and run again.
- 1, :class:`EnvironmentFailure`: the input was fine but something the run depends on is not
  (storage, a server, a worker, a process that died); 1 is also what any unexpected error exits with.
- 3 and 4: verdicts on the candidate (rejected by the model gate, rolled back by the deploy stage).
- 64: the command line itself is wrong (an unknown option, a missing argument, options that
  exclude each other); nothing was read or run.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What each exit status of ``mlops`` means, the same for every command."""

    OK = 0
    ENVIRONMENT = 1
    """The input was fine; storage, a server or a process the command needs failed."""
    BAD_INPUT = 2
    """A config, data file, model reference or setting the user gave is wrong or missing."""
    REJECTED = 3
    """The candidate was not promoted: the model gate rejected it (or a concurrent promotion won)."""
    ROLLED_BACK = 4
    """The candidate was deployed, failed the deploy stage's smoke test and was rolled back."""
    USAGE = 64
    """The command line is wrong (sysexits' EX_USAGE): nothing was read or run."""


class MlopsError(Exception):
    """Base class for errors a user can act on; by default caused by input they control."""

    exit_code = ExitCode.BAD_INPUT


class ConfigError(MlopsError):
    """The configuration file is missing, malformed, or has an unknown key or a wrong type."""


class DataError(MlopsError):
    """The data source is missing, unreadable, or unusable for the declared task."""


class DataValidationError(MlopsError):
    """A new dataset version failed the data gate; nothing was trained on it."""


class PromotionConflict(MlopsError):
    """Another promotion moved the champion while this one was being decided."""

    exit_code = ExitCode.REJECTED


class EnvironmentFailure(MlopsError):
    """Not the input: storage, a server or a process the run depends on failed or is missing."""

    exit_code = ExitCode.ENVIRONMENT


class StorageError(EnvironmentFailure):
    """A store the pipeline writes to (the artifact store) cannot be written."""
