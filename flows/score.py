"""Batch scoring: a file or folder of rows scored by the champion (or a named version)."""

from __future__ import annotations

from prefect import flow

from prefect_mlops.serving.batch import BatchScoreRequest, BatchScoreResult
from prefect_mlops.tasks.scoring import score_batch_task


@flow(name="batch-score", log_prints=True, persist_result=True, result_serializer="json")
def batch_score_flow(request: BatchScoreRequest) -> BatchScoreResult:
    """Score a CSV or Parquet file or folder with a registered model version, in chunks.

    Predictions go to ``request.out`` or to ``predictions/<model>/<version>/<batch id>/`` in
    the artifact store, one ``part-*.parquet`` per input file, each row with its ``request_id``,
    ``row``, ``model`` and ``version``; the chunks are recorded in the inference log, which the
    drift monitor reads. A bad input file fails the run and writes nothing.

    Args:
        request: The model (and alias or version), the data, where the output goes.
    """
    result = score_batch_task(request)
    print(
        f"Scored {result.rows:,} rows of {len(result.inputs)} file(s) with {result.model} "
        f"version {result.version} in {result.seconds:.1f}s -> {result.output}"
    )
    return result
