"""Process-wide settings, read once from the environment.

Everything durable defaults to a folder under ``.mlops/`` in the working directory; the
standard variables (``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``) and ``MLOPS_*`` variables
point the same code at real servers.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BeforeValidator,
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _store_options(value: Any) -> Any:
    """``MLOPS_ARTIFACT_STORE_OPTIONS`` as a dict; a message naming the variable otherwise."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value or "{}")
    except ValueError as error:
        raise ValueError(
            f"MLOPS_ARTIFACT_STORE_OPTIONS is not valid JSON ({error}): give the artifact "
            'store\'s fsspec options as a JSON object, e.g. {"anon": false}.'
        ) from None
    if not isinstance(parsed, dict):
        raise ValueError(
            f"MLOPS_ARTIFACT_STORE_OPTIONS must be a JSON object of fsspec options, not "
            f"{type(parsed).__name__} ({value!r})."
        )
    return parsed


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


StoreOptions = Annotated[dict[str, Any], NoDecode, BeforeValidator(_store_options)]


class Settings(BaseSettings):
    """Where the pipeline keeps its state and which engines it talks to."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", extra="ignore")

    home: Path = Field(default=Path(".mlops"), description="Root of all local state.")
    tracking_uri: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "MLOPS_TRACKING_URI"),
        description="MLflow tracking/registry URI; default: SQLite under home.",
    )
    artifact_store: str | None = Field(
        default=None,
        description="fsspec URL where datasets and reports are written; default: home/artifacts.",
    )
    artifact_store_options: StoreOptions = Field(
        default_factory=dict,
        description="fsspec storage options of the artifact store as a JSON object "
        "(credentials, endpoint), as data.storage_options are for a source.",
    )
    dask_scheduler_address: str | None = Field(
        default=None,
        validation_alias=AliasChoices("MLOPS_DASK_SCHEDULER_ADDRESS", "DASK_SCHEDULER_ADDRESS"),
        description="Existing Dask scheduler to train on; default: a LocalCluster per run.",
    )
    dask_cluster: Literal["local", "scheduler", "kubernetes"] | None = Field(
        default=None,
        description="Where training's Dask cluster comes from: a LocalCluster per run, the "
        "existing scheduler at dask_scheduler_address, or a KubeCluster per run (dask-kubernetes' "
        "operator); default: the scheduler when an address is set, else local.",
    )
    dask_kubernetes_image: str | None = Field(
        default=None, description="Image of the KubeCluster's scheduler and workers."
    )
    dask_kubernetes_namespace: str | None = Field(
        default=None, description="Namespace the KubeCluster is created in; default: the pod's."
    )
    stage_runner: Literal["in-process", "deployments"] = Field(
        default="in-process",
        description="How the retraining pipeline runs its stages: as sub-flows in its own "
        "process, or as runs of each stage's deployment on its own work pool "
        "(set for the pipeline deployment in prefect.yaml).",
    )
    stage_start_timeout_s: float = Field(
        default=600,
        gt=0,
        description="A stage run that no worker has started after this long is cancelled and "
        "fails the pipeline (its work pool has no live worker).",
    )
    stage_poll_s: float = Field(
        default=0.25,
        gt=0,
        description="How often the pipeline checks on a stage run (each check costs the "
        "Prefect server about 6 ms of CPU).",
    )
    worker_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often each worker of the local stack (mlops up) asks its pool for runs: "
        "a stage run waits half of it on average before its worker sees it. Each ask costs the "
        "Prefect server about 25 ms of CPU (Prefect's default is 10 s).",
    )
    warm_stages: bool = Field(
        default=True,
        description="The local stack (mlops up) starts a fork server that has imported the "
        "flows once; each stage's process is forked from it instead of starting Python and "
        "importing everything afresh (docs/operations.md). False: every stage process starts "
        "cold, as Prefect starts it.",
    )
    api_outage_s: float = Field(
        default=600,
        ge=0,
        description="How long the pipeline keeps waiting for a stage while the Prefect API "
        "cannot be reached (a server restart, a network blip) before it fails.",
    )
    stack_host: str = Field(
        default="127.0.0.1", description="Interface the local stack's servers bind (mlops up)."
    )
    prefect_port: int = Field(default=4200, description="Prefect server port of the local stack.")
    mlflow_port: int = Field(default=5000, description="MLflow server port of the local stack.")
    stack_log_max_bytes: ByteSize = Field(
        default=ByteSize(50 * 2**20),
        description="The stack's supervisor rotates a log of <home>/stack/logs larger than this "
        "(e.g. 50MiB): copied to NAME.log.1, then emptied in place; 0 turns rotation off.",
    )
    stack_log_backups: int = Field(
        default=3,
        ge=0,
        description="Rotated copies kept of each stack log (NAME.log.1 newest ... NAME.log.N); "
        "0 keeps none, an over-size log is only emptied.",
    )

    mlflow_backend_store_uri: str | None = Field(
        default=None,
        description="Backend store of the MLflow server `mlops up` / `mlops mlflow-server` "
        "starts (e.g. postgresql://user@host/mlflow); default: SQLite under home.",
    )
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="Where experiments keep their artifacts (e.g. s3://bucket/mlflow); default: "
        "home/mlflow-artifacts, or the server's own default for an http(s) tracking URI.",
    )
    mlflow_artifacts_destination: str | None = Field(
        default=None,
        description="Object storage the MLflow server proxies artifacts to (clients then need "
        "no storage credentials); replaces mlflow_artifact_root on the server.",
    )
    mlflow_admin_username: str = Field(
        default="admin", description="Admin user of the MLflow server's basic-auth app."
    )
    mlflow_admin_password: SecretStr | None = Field(
        default=None,
        description="Turns on the MLflow server's basic-auth app with this admin password; "
        "MLflow's old default and passwords under 12 characters are refused at start-up.",
    )
    mlflow_auth_database_url: str | None = Field(
        default=None, description="The basic-auth app's user database; default: SQLite under home."
    )

    allocator_history_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the allocator's run history; default: SQLite under home.",
    )
    allocator_max_workers: int | None = Field(
        default=None,
        ge=1,
        description="The most workers one run may get: of an existing scheduler's (default: all), "
        "or of a KubeCluster (default: training.cluster.n_workers).",
    )
    allocator_threads_per_worker: int = Field(
        default=1, ge=1, description="Threads per KubeCluster worker at most."
    )
    allocator_memory_per_worker: str = Field(
        default="4GiB", description="Memory per KubeCluster worker at most."
    )
    allocator_gpus: int | None = Field(
        default=None, ge=0, description="GPUs the allocator may use; default: count nvidia-smi's."
    )
    allocator_gpu_prior_speedup: float = Field(
        default=1.5, gt=0, description="GPU speed-up assumed until GPU runs are measured."
    )
    allocator_machines: str | None = Field(
        default=None,
        description="CSV or YAML of machine types (name, vcpus, memory_gib, gpus, "
        "price_per_hour) that extends and overrides the built-in catalogue.",
    )

    serving_host: str = Field(default="127.0.0.1", description="Interface `mlops serve` binds.")
    serving_port: int = Field(default=5001, description="Port of `mlops serve`.")
    serving_max_body_bytes: int = Field(
        default=16 * 2**20, gt=0, description="Larger request bodies get 413."
    )
    serving_max_in_flight: int = Field(
        default=64,
        gt=0,
        description="Requests being scored at once (bodies read); beyond, 503 + Retry-After.",
    )
    serving_body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request body must be in this long after its headers; else 408 (a slow "
        "client holds no scoring slot meanwhile).",
    )
    serving_max_body_memory_bytes: int = Field(
        default=256 * 2**20,
        gt=0,
        description="Bytes of request bodies held at once (being received or scored); beyond, "
        "503 + Retry-After. Keep it at least MLOPS_SERVING_MAX_BODY_BYTES.",
    )
    serving_latency_budget_ms: float = Field(
        default=100.0,
        ge=0,
        description="A request that finds the event loop busy with its own work for more than "
        "half this past its last timer gets 503 + Retry-After at once, so the requests "
        "accepted keep a wait near it under overload (0: never shed).",
    )
    model_check_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A model from the registry is loaded and checked in a child process before "
        "serving (or the model gate) loads it; one that takes longer than this is refused.",
    )
    model_check_memory_mb: int = Field(
        default=4096,
        ge=0,
        description="Memory the model-check child process may add to read and check a model; "
        "a model that needs more is refused (0: no cap).",
    )

    serving_admin_token: str | None = Field(
        default=None, description="Bearer token of POST /admin/reload; reloading is off without."
    )
    serving_poll_s: float = Field(
        default=30.0, ge=0, description="How often `mlops serve` checks the alias (0: never)."
    )
    serving_access_log_level: Annotated[
        Literal["debug", "info", "warning", "error", "off"], BeforeValidator(_lower)
    ] = Field(
        default="info",
        description="Which requests `mlops serve` writes a JSON access-log line for (stderr): "
        "info every one, warning those answered 4xx or 5xx, error those answered 5xx, off none. "
        "A line's level follows its status (info below 400, warning 4xx, error 5xx).",
    )
    serving_urls: str | None = Field(
        default=None,
        description="Comma-separated base URLs of the serving instances the deploy stage reloads "
        "and smoke-tests (e.g. http://10.0.0.5:5001); none: the check runs in-process.",
    )

    serving_model: str = Field(
        default="fraud-detector",
        description="Model the local stack's serving instance serves (`mlops up`).",
    )
    inference_log: Literal["parquet", "sql", "off"] = Field(
        default="parquet",
        description="Where `mlops serve` records scored requests: Parquet files under the "
        "artifact store, a SQL table (inference_log_url), or nowhere.",
    )
    inference_log_url: str | None = Field(
        default=None, description="SQLAlchemy URL of the inference log table (inference_log=sql)."
    )
    inference_log_sample_rate: float = Field(
        default=1.0, ge=0, le=1, description="Share of requests recorded in the inference log."
    )
    inference_log_flush_s: float = Field(
        default=10.0, gt=0, description="How often recorded requests are written out."
    )
    inference_log_max_buffer_rows: int = Field(
        default=200_000,
        gt=0,
        description="Rows waiting to be written at most (a failed write's rows are kept and "
        "tried again); beyond, new rows are dropped and counted.",
    )
    inference_log_max_buffer_bytes: int = Field(
        default=256 * 2**20,
        gt=0,
        description="Bytes of request bodies the inference log holds unwritten (during a "
        "storage outage, say); beyond, new rows are dropped and counted.",
    )
    inference_log_journal_dir: Path | None = Field(
        default=None,
        description="Local folder of the inference log's crash journal (replayed by the next "
        "`mlops serve`); default: home/inference-log-journal.",
    )

    @model_validator(mode="after")
    def _bodies_fit_in_memory(self) -> Settings:
        if self.serving_max_body_memory_bytes < self.serving_max_body_bytes:
            raise ValueError(
                f"MLOPS_SERVING_MAX_BODY_MEMORY_BYTES ({self.serving_max_body_memory_bytes}) is "
                f"below MLOPS_SERVING_MAX_BODY_BYTES ({self.serving_max_body_bytes}): a body "
                "the service accepts could never be held. Raise the first or lower the second."
            )
        return self

    @property
    def serving_instances(self) -> list[str]:
        """The base URLs in ``serving_urls``, without trailing slashes."""
        urls = (self.serving_urls or "").split(",")
        return [url.strip().rstrip("/") for url in urls if url.strip()]

    @property
    def resolved_history_url(self) -> str:
        """Where the allocator's run history lives."""
        return self.allocator_history_url or f"sqlite:///{self.home_dir / 'allocator.db'}"

    @property
    def inference_log_journal_root(self) -> Path:
        """Where the inference log journals rows until they are written."""
        return self.inference_log_journal_dir or self.home_dir / "inference-log-journal"

    @property
    def home_dir(self) -> Path:
        """Absolute path of the local state folder."""
        return self.home.expanduser().resolve()

    @property
    def resolved_tracking_uri(self) -> str:
        """The MLflow tracking URI in use."""
        return self.tracking_uri or self.local_mlflow_uri

    @property
    def local_mlflow_uri(self) -> str:
        """The SQLite MLflow store under home: the default tracking URI and backend store."""
        return f"sqlite:///{self.home_dir / 'mlflow.db'}"

    @property
    def resolved_backend_store_uri(self) -> str:
        """The backend store of the MLflow server we start."""
        return self.mlflow_backend_store_uri or self.local_mlflow_uri

    @property
    def default_artifact_root(self) -> str:
        """Where MLflow artifacts go unless a server says otherwise: the setting, or home."""
        root = self.mlflow_artifact_root or (self.home_dir / "mlflow-artifacts").as_uri()
        return root.rstrip("/")

    @property
    def experiment_artifact_root(self) -> str | None:
        """Where experiments created by the pipeline keep their artifacts (None: the server's)."""
        remote = self.resolved_tracking_uri.startswith(("http://", "https://"))
        return None if remote and not self.mlflow_artifact_root else self.default_artifact_root

    @property
    def resolved_dask_cluster(self) -> str:
        """``local``, ``scheduler`` or ``kubernetes``."""
        if self.dask_cluster:
            return self.dask_cluster
        return "scheduler" if self.dask_scheduler_address else "local"

    @property
    def resolved_artifact_store(self) -> str:
        """Root URL for datasets, reports and other pipeline artifacts."""
        return self.artifact_store or str(self.home_dir / "artifacts")


def settings_problems(error: ValidationError) -> str:
    """A settings validation error in the words of the environment variables that caused it."""
    problems = [
        f"{Settings.model_config['env_prefix']}{'_'.join(map(str, e['loc'])).upper()}: "
        f"{e['msg']} (got {e.get('input')!r})"
        for e in error.errors()
    ]
    return "Invalid setting(s): " + "; ".join(problems)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Read the settings once per process."""
    return Settings()
