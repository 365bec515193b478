"""prefect-mlops from Python: the functions behind ``mlops run``, ``recommend``, ``serve`` and
``score``, with the same arguments (see ``docs/python-api.md``). Importing it is quick: each
function imports what it needs when called."""

from prefect_mlops.api import recommend, run_pipeline, score, serve

__all__ = ["recommend", "run_pipeline", "score", "serve"]
