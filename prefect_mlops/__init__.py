"""prefect-mlops: a retraining pipeline for tabular models on Prefect, Dask and MLflow.

The repository's top-level folders (cli/, flows/, tasks/, serving/, model_registry/, infra/,
mlops/) are this package's subpackages once installed (see setup.py).

From Python: the functions behind ``mlops run``, ``recommend``, ``serve`` and ``score``, with
the same arguments (``docs/python-api.md``): ``from prefect_mlops import run_pipeline, score``.
They are looked up in :mod:`prefect_mlops.api` when first used, so importing a subpackage (the
model check's child process imports ``prefect_mlops.mlops``) never loads the API, and the API
loads nothing heavy until a function is called.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["recommend", "run_pipeline", "score", "serve"]


def __getattr__(name: str) -> Any:
    """``prefect_mlops.<function>``: the API's function of that name."""
    if name in __all__:
        return getattr(importlib.import_module("prefect_mlops.api"), name)
    raise AttributeError(f"module 'prefect_mlops' has no attribute {name!r}")
