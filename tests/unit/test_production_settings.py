"""The production profile by settings alone: the MLflow server's launch, an existing Dask
cluster's resources, the KubeCluster spec, clients' credentials."""

from __future__ import annotations

import sqlite3

import pytest

from prefect_mlops.infra.allocator.resources import candidate_shapes, existing_cluster_resources
from prefect_mlops.infra.dask_cluster import ClusterUnavailable, kube_cluster_spec
from prefect_mlops.infra.environment import client_credentials
from prefect_mlops.infra.mlflow_server import mlflow_server_launch
from prefect_mlops.mlops.config import ClusterConfig
from prefect_mlops.mlops.settings import Settings

GIB = 2**30
PG = "postgresql://mlflow:pw@db.internal:5432/mlflow"


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_mlflow_server_on_postgres_and_object_storage_behind_basic_auth(tmp_path):
    settings = Settings(
        home=tmp_path,
        mlflow_backend_store_uri=PG,
        mlflow_artifacts_destination="s3://models/mlflow",
        mlflow_auth_database_url="postgresql://mlflow:pw@db.internal:5432/mlflow_auth",
        mlflow_admin_password="a-long-enough-secret",
    )
    launch = mlflow_server_launch(settings, "0.0.0.0", 5000)
    command = launch.command
    assert option(command, "--backend-store-uri") == PG
    assert option(command, "--artifacts-destination") == "s3://models/mlflow"
    assert option(command, "--default-artifact-root") == "mlflow-artifacts:/"
    assert option(command, "--app-name") == "basic-auth"
    assert launch.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == "a-long-enough-secret"
    assert len(launch.env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) >= 32
    ini = (tmp_path / "mlflow-auth" / "basic_auth.ini").read_text()
    assert "mlflow_auth" in ini and "admin_username = admin" in ini
    assert "auth_cache_ttl_seconds = 60" in ini
    assert "authorization_function = prefect_mlops.infra.mlflow_auth:authenticate" in ini
    assert "a-long-enough-secret" not in ini  # the password stays in the environment


def test_the_default_mlflow_server_is_sqlite_under_home_without_auth(tmp_path):
    launch = mlflow_server_launch(Settings(home=tmp_path), "127.0.0.1", 5000)
    assert option(launch.command, "--backend-store-uri") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert "--app-name" not in launch.command and not launch.authenticated
    # Many clients at once: no connection pool to run out of, readers never wait for a writer.
    assert launch.env == {"MLFLOW_SQLALCHEMYSTORE_POOLCLASS": "NullPool"}
    with sqlite3.connect(tmp_path / "mlflow.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_experiments_use_the_servers_artifact_root_unless_one_is_set(tmp_path, monkeypatch):
    assert Settings(home=tmp_path).experiment_artifact_root.startswith("file://")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.internal")
    assert Settings(home=tmp_path).experiment_artifact_root is None  # the server's default
    assert Settings(home=tmp_path, mlflow_artifact_root="s3://b/m/").experiment_artifact_root == (
        "s3://b/m"
    )


def worker(nthreads: int, memory: int, **resources: float) -> dict:
    return {"nthreads": nthreads, "memory_limit": memory, "resources": resources}


def test_an_existing_cluster_offers_its_workers_not_new_sizes():
    workers = [worker(2, 4 * GIB), worker(4, 8 * GIB, GPU=1), worker(2, 4 * GIB)]
    resources = existing_cluster_resources("tcp://10.0.0.5:8786", workers)
    assert (resources.max_workers, resources.max_threads_per_worker) == (3, 2)
    assert resources.memory_bytes == 3 * 4 * GIB and resources.gpus == 1
    assert "tcp://10.0.0.5:8786 (3 worker(s) x 2 thread(s), 4.00 GiB each)" in (
        resources.description
    )
    shapes, notes = candidate_shapes(resources, max_threads_per_worker=1)
    assert sorted({s.workers for s in shapes}) == [1, 2, 3]
    assert {(s.threads_per_worker, s.memory_per_worker_bytes) for s in shapes} == {(2, 4 * GIB)}
    assert [s.workers for s in shapes if s.gpu] == [1]
    assert any("fixed" in note for note in notes)

    capped = existing_cluster_resources("tcp://x:8786", workers, max_workers=2)
    assert capped.max_workers == 2 and "lets a run use 2" in capped.description
    with pytest.raises(ValueError, match="has no worker"):
        existing_cluster_resources("tcp://x:8786", [])


def test_the_kubecluster_gets_the_allocated_shape():
    spec = kube_cluster_spec(
        ClusterConfig(n_workers=3, threads_per_worker=2, memory_limit="4GiB"), "registry/img:1"
    )
    pods = spec["spec"]["worker"]
    container = pods["spec"]["containers"][0]
    assert pods["replicas"] == 3 and container["image"] == "registry/img:1"
    assert option(container["args"], "--nthreads") == "2"
    assert option(container["args"], "--memory-limit") == str(4 * GIB)
    assert container["resources"]["limits"] == {"cpu": "2", "memory": str(4 * GIB)}
    with pytest.raises(ClusterUnavailable, match="MLOPS_DASK_KUBERNETES_IMAGE"):
        kube_cluster_spec(ClusterConfig(), None)


def test_clients_of_the_stack_get_its_credentials_unless_they_have_their_own(tmp_path):
    settings = Settings(home=tmp_path, mlflow_admin_password="a-long-enough-secret")
    added = client_credentials({"PREFECT_SERVER_API_AUTH_STRING": "admin:x"}, settings)
    assert added == {
        "PREFECT_API_AUTH_STRING": "admin:x",
        "MLFLOW_TRACKING_USERNAME": "admin",
        "MLFLOW_TRACKING_PASSWORD": "a-long-enough-secret",
    }
    own = {"PREFECT_API_AUTH_STRING": "ci:y", "MLFLOW_TRACKING_USERNAME": "ci"}
    assert client_credentials(own, settings) == {}
