"""Training on an existing multi-process Dask cluster: `dask scheduler` and `dask worker`
processes on loopback, sized by the allocator, and a worker killed mid-training."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest
from distributed import Client, get_task_stream
from mlflow.tracking import MlflowClient

from prefect_mlops.flows.preprocess import preprocess_flow
from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.infra.allocator.planner import open_history
from prefect_mlops.mlops.dask_workers import cluster_workers
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry.tracking import tracking_uri_for
from prefect_mlops.tasks.allocation import recommend_for_dataset
from prefect_mlops.tasks.training import train_on_allocation
from tests.integration.conftest import bundled_config
from tests.integration.test_allocation import forced
from tests.ports import free_port

DASK = str(Path(sys.executable).parent / "dask")
WORKER_MEMORY = 2 * 2**30


class ProcessCluster:
    """A scheduler and workers, each its own process, as `dask scheduler` / `dask worker` start them."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.processes: list[subprocess.Popen] = []
        self.workers: dict[str, subprocess.Popen] = {}
        port = self.address.rsplit(":", 1)[1]
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", port,
                    "--no-dashboard")  # fmt: skip

    def _start(self, log: str, *command: str) -> subprocess.Popen:
        with (self.logs / f"{log}.log").open("w") as out:
            process = subprocess.Popen(
                [DASK, *command], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.processes.append(process)
        return process

    def add_worker(self) -> subprocess.Popen:
        """A worker with its nanny, as `dask worker` starts one; its own process group."""
        name = f"worker-{len(self.processes)}"
        self.workers[name] = self._start(
            name, "worker", self.address, "--name", name, "--host", "127.0.0.1",
            "--nthreads", "1", "--memory-limit", str(WORKER_MEMORY), "--no-dashboard",
        )  # fmt: skip
        return self.workers[name]

    def wait_for_workers(self, count: int, seconds: float = 60) -> None:
        with Client(self.address, timeout="30s", set_as_default=False) as client:
            client.wait_for_workers(count, timeout=seconds)

    def stop(self) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[ProcessCluster]:
    processes = ProcessCluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        for _ in range(3):
            processes.add_worker()
        processes.wait_for_workers(3)
        yield processes
    finally:
        processes.stop()


@pytest.fixture(autouse=True)
def no_leaked_default_scheduler():
    """Clients made here must leave dask's process-wide scheduler setting as they found it
    (later tests run Dask in-process)."""
    before = dask.config.get("scheduler", None)
    yield
    assert dask.config.get("scheduler", None) == before


@pytest.fixture
def on_cluster(cluster, monkeypatch) -> ProcessCluster:
    monkeypatch.setenv("MLOPS_DASK_SCHEDULER_ADDRESS", cluster.address)
    get_settings.cache_clear()
    return cluster


@contextlib.contextmanager
def train_part_workers(address: str) -> Iterator[set[str]]:
    """The workers that run a LightGBM training part meanwhile (the scheduler's task stream)."""
    used: set[str] = set()
    with (
        Client(address, timeout="30s", set_as_default=False) as client,
        get_task_stream(client) as stream,
    ):
        yield used
    used.update(task["worker"] for task in stream.data if "_train_part" in task["key"])


def test_the_allocator_sizes_the_run_within_the_existing_cluster(
    on_cluster, fraud_config, tmp_path
):
    dataset = preprocess_flow(fraud_config)

    allocation = recommend_for_dataset(fraud_config, dataset)
    assert (
        f"sized within the existing Dask cluster at {on_cluster.address} "
        "(3 worker(s) x 1 thread(s), 2.00 GiB each)" in allocation.rationale
    )
    assert 1 <= allocation.workers <= 3 and allocation.threads_per_worker == 1
    assert allocation.memory_per_worker_bytes == WORKER_MEMORY  # the workers' own, not chosen

    two = forced(WORKER_MEMORY).model_copy(update={"workers": 2})
    with train_part_workers(on_cluster.address) as used:
        attempt = train_on_allocation(dataset, fraud_config.training, two, str(tmp_path / "work"))
    assert attempt.error is None and attempt.trained is not None
    assert attempt.profile.backend == "scheduler" and attempt.profile.workers == 2
    assert len(used) == 2  # two of the three workers, the third left free
    assert used == set(attempt.trained.peak_worker_memory_bytes)


def kill_a_worker_once_training_starts(cluster: ProcessCluster, killed: dict) -> None:
    """SIGKILL the first worker seen running a LightGBM training part."""
    with Client(cluster.address, timeout="30s", set_as_default=False) as client:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            for worker, keys in client.processing().items():
                if any("_train_part" in str(key) for key in keys):
                    name = cluster_workers(client)[worker]["name"]
                    os.killpg(cluster.workers[name].pid, signal.SIGKILL)  # nanny and worker
                    killed.update(worker=worker, at=time.monotonic())
                    return
            time.sleep(0.1)


@pytest.mark.reliability
def test_a_worker_killed_mid_training_fails_the_run_cleanly_and_a_retry_succeeds(
    on_cluster, fraud_file, figures
):
    config = bundled_config(
        "fraud_detection",
        fraud_file,
        n_estimators=4000,  # long enough to be killed mid-way
        early_stopping_rounds=0,
        cluster={"network_timeout_minutes": 1},
    ).model_copy(update={"name": f"fraud-killed-{uuid.uuid4().hex[:6]}"})
    # Two workers, so the survivor is inside LightGBM's network when its peer dies.
    config = config.model_copy(
        update={
            "training": config.training.model_copy(
                update={
                    "allocator": config.training.allocator.model_copy(update={"enabled": False}),
                    "cluster": config.training.cluster.model_copy(update={"n_workers": 2}),
                }
            )
        }
    )
    killed: dict = {}
    killer = threading.Thread(target=kill_a_worker_once_training_starts, args=(on_cluster, killed))
    killer.start()
    with pytest.raises(Exception, match="left the Dask cluster mid-training"):
        retraining_pipeline_flow(config)
    failed_at = time.monotonic()
    killer.join()
    assert killed, "no worker was seen training"
    print(f"the run failed {failed_at - killed['at']:.1f}s after the kill")
    assert failed_at - killed["at"] < 60  # bounded: well inside LightGBM's 1-minute time_out

    uri = tracking_uri_for(config)
    client = MlflowClient(uri, registry_uri=uri)
    assert client.search_model_versions(f"name='{config.model.name}'") == []  # nothing registered
    store = open_history(get_settings())
    try:
        runs = [(r.status, r.workers, r.memory_per_worker_bytes) for r in store.runs(config.name)]
        assert runs == [("killed", 2, WORKER_MEMORY)]  # the workers as they are
    finally:
        store.close()

    on_cluster.add_worker()  # the operator replaces the lost worker; the retry succeeds
    on_cluster.wait_for_workers(3)
    quick = config.model_copy(
        update={"training": config.training.model_copy(update={"n_estimators": 150})}
    )
    result = retraining_pipeline_flow(quick)
    assert (result.model_version, result.alias) == ("1", "champion")
    experiment = client.get_experiment_by_name(config.experiment_name).experiment_id
    running = client.search_runs([experiment], "attributes.status = 'RUNNING'")
    assert running == []
    figures.record(
        "orchestration",
        "a Dask worker killed mid-training",
        "SIGKILL of one of 2 workers (nanny included) of an existing Dask cluster while "
        "LightGBM trains on it",
        True,
        "the run failed naming the lost worker, registered nothing and recorded 'killed' in "
        "the allocator's history; with the worker replaced, the retry became champion",
        seconds_kill_to_failure=round(failed_at - killed["at"], 1),
        versions_after_failure=0,
        mlflow_runs_left_running=len(running),
    )
