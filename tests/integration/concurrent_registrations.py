"""Many flow runs at once, each logging an MLflow run, registering a version and recording an
allocator run: ``python -m tests.integration.concurrent_registrations N MODEL HISTORY_URL OUT``.

Run by ``test_production.py`` against Prefect and MLflow servers on PostgreSQL; the servers and
credentials come from the environment (PREFECT_API_URL, PREFECT_API_AUTH_STRING,
MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME/PASSWORD). Writes one JSON line per outcome to
OUT, not to stdout: MLflow prints its "View run" links to stdout from other threads, and a line
of theirs can land in the middle of one of ours.
"""

from __future__ import annotations

import json
import sys
import threading

from mlflow.tracking import MlflowClient
from prefect import flow, task

from prefect_mlops.infra.allocator.history import ClusterShape, HistoryStore, JobFeatures
from prefect_mlops.infra.allocator.profiling import profile_row
from prefect_mlops.model_registry.registry import register_model_version

JOB = JobFeatures(
    n_rows=1000,
    n_features=5,
    n_numeric=5,
    n_categorical=0,
    bytes_in_memory=10**6,
    max_cardinality=0,
    mean_cardinality=0.0,
    sparsity=0.0,
    task="binary",
    n_classes=2,
    n_estimators=10,
    num_leaves=15,
    max_bin=63,
    learning_rate=0.1,
    early_stopping_rounds=0,
)


@task
def log_and_register(index: int, model: str, history_url: str) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("concurrency")
    run_id = client.create_run(experiment.experiment_id, run_name=f"concurrent-{index}").info.run_id
    client.log_metric(run_id, "index", index)
    client.log_text(run_id, f"run {index}", "notes.txt")
    registered = register_model_version(
        client, model, f"runs:/{run_id}/notes.txt", run_id, {"index": str(index)}
    )
    client.set_terminated(run_id)
    store = HistoryStore(history_url)
    try:
        store.record(
            profile_row(
                JOB.model_copy(update={"n_rows": 1000 + index}),
                ClusterShape(workers=1, threads_per_worker=1, memory_per_worker_bytes=2**30),
                use_case="concurrency",
                dataset_version=f"v{index}",
                status="success",
                startup_s=0.5,
                wall_time_s=1.0,
                iterations=10,
                peak_memory_bytes=2**28,
            )
        )
    finally:
        store.close()
    return registered.version


@flow(name="concurrent-registration")
def concurrent_registration_flow(index: int, model: str, history_url: str) -> str:
    return log_and_register(index, model, history_url)


def main(count: int, model: str, history_url: str, out: str) -> None:
    MlflowClient().create_experiment("concurrency")
    start = threading.Barrier(count)
    lock = threading.Lock()

    def one(index: int) -> None:
        start.wait()  # every flow run starts at the same moment
        try:
            outcome = {
                "index": index,
                "version": concurrent_registration_flow(index, model, history_url),
            }
        except Exception as error:  # reported, not raised: the test counts them
            outcome = {"index": index, "error": f"{type(error).__name__}: {error}"}
        with lock:
            outcomes.write(json.dumps(outcome) + "\n")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    with open(out, "w", encoding="utf-8") as outcomes:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
