"""prefect-mlops: a retraining pipeline for tabular models on Prefect, Dask and MLflow.

The repository's top-level folders (cli/, flows/, tasks/, serving/, model_registry/, infra/,
mlops/) are this package's subpackages once installed (see setup.py).

From Python: the functions behind ``mlops run``, ``recommend``, ``serve`` and ``score``, with
the same arguments (``docs/python-api.md``). Importing the package is quick: each function
imports what it needs when called.
"""

from prefect_mlops.api import recommend, run_pipeline, score, serve

__all__ = ["recommend", "run_pipeline", "score", "serve"]
