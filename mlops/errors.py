"""Errors a user can act on. The CLI prints their message as one paragraph and exits non-zero."""

from __future__ import annotations


class MlopsError(Exception):
    """Base class for errors caused by input the user controls (config, data, settings)."""

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
