"""Fixtures of the suites that run real components: a Prefect API, data files, a trained model.

Registered for the whole suite by ``tests/conftest.py`` (``pytest_plugins``), so one session
shares one Prefect test server and one trained model between ``tests/integration`` and
``tests/reliability``. Nothing here is autouse: a package asks for what it needs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from prefect_mlops.mlops.config import PipelineConfig, parse_config
from prefect_mlops.mlops.synthetic import write_dataset
from tests.reliability.figures import Figures

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server (SQLite) for the whole session, stopped at the end.

    Shared by every package that asks for it (``tests/integration``, ``tests/reliability``).
    """
    home = tempfile.mkdtemp(prefix="prefect-home-")
    os.environ["PREFECT_HOME"] = home
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def fraud_file(data_dir) -> Path:
    return write_dataset("fraud", 30_000, data_dir / "fraud.parquet", seed=5, chunk_rows=10_000)


@pytest.fixture(scope="session")
def cars_file(data_dir) -> Path:
    return write_dataset("car_dealership", 12_000, data_dir / "cars.csv", seed=6, chunk_rows=6_000)


def bundled_config(name: str, source: Path, **training) -> PipelineConfig:
    """A bundled use case pointed at a test file, with a quicker training budget."""
    raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"].update({"n_estimators": 150, **training})
    return parse_config(raw, origin=name)


@pytest.fixture
def fraud_config(fraud_file) -> PipelineConfig:
    return bundled_config("fraud_detection", fraud_file)


@pytest.fixture
def cars_config(cars_file) -> PipelineConfig:
    return bundled_config("car_dealership", cars_file)


def state_env(home: Path) -> dict[str, str]:
    """The variables that point every command at the state folder ``home`` and its MLflow store."""
    uri = f"sqlite:///{home / 'mlflow.db'}"
    return {"MLOPS_HOME": str(home), "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}


@contextmanager
def serving_process(model: str, port: int, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A real `mlops serve MODEL` on 127.0.0.1:PORT, up (answering /ping) for the block.

    Its output goes to a temporary file, not a pipe: a pipe no one reads fills up with the
    access log's lines and then blocks the server's next write.
    """
    mlops = str(Path(sys.executable).parent / "mlops")
    with tempfile.TemporaryFile("w+") as output:
        server = subprocess.Popen(
            [mlops, "serve", model, "--port", str(port)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    output.seek(0)
                    raise RuntimeError(
                        f"mlops serve did not come up on port {port}: {output.read()[-5000:]}"
                    )
                time.sleep(0.3)
            yield server
        finally:
            server.terminate()
            server.wait(timeout=20)


def pipeline_registry(home: Path, fraud_file: Path, family: str) -> dict:
    """A fraud model of ``family`` trained and promoted by the pipeline, in a registry of its own
    in ``home``; with its test rows and the registered pyfunc's predictions of them."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from prefect_mlops.flows.preprocess import preprocess_flow
    from prefect_mlops.flows.retrain import retraining_pipeline_flow
    from prefect_mlops.mlops.dataset import read_split
    from prefect_mlops.mlops.settings import get_settings
    from prefect_mlops.serving.loader import load_served_model

    env = state_env(home)
    uri = env["MLFLOW_TRACKING_URI"]
    with pytest.MonkeyPatch.context() as patch:  # only while it is built: tests pass uri on
        for name, value in env.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        config = bundled_config("fraud_detection", fraud_file, n_estimators=60, family=family)
        # The model every serving test shares: its latency is judged by those tests, not by a
        # gate whose 50 ms budget a machine busy with other tests can miss.
        gate = config.model_gate.model_copy(update={"max_latency_p95_ms": None})
        config = config.model_copy(update={"model_gate": gate})
        result = retraining_pipeline_flow(config)
        assert result.alias == "champion", result
        dataset = preprocess_flow(config)
        rows = read_split(dataset, "test").head(300)
        served = load_served_model(MlflowClient(uri, registry_uri=uri), "fraud-detector", uri)
        pyfunc = mlflow.pyfunc.load_model("models:/fraud-detector@champion")
        columns = served.spec.input_columns
        expected = pyfunc.predict(rows[columns])
    get_settings.cache_clear()
    return {
        "home": home,
        "uri": uri,
        "served": served,
        "rows": rows[columns].reset_index(drop=True),
        "expected": expected.reset_index(drop=True),
        "version": result.model_version,
        "env": env,
        "dataset": dataset,
        "config": config,
        "family": family,
        "training_run_id": result.training_run_id,
    }


@pytest.fixture(scope="session")
def served_registry(tmp_path_factory, fraud_file, prefect_api):
    """A LightGBM fraud model trained and promoted by the pipeline, in a registry of its own."""
    return pipeline_registry(tmp_path_factory.mktemp("serving-home"), fraud_file, "lightgbm")


@pytest.fixture
def store(served_registry, tmp_path, monkeypatch):
    """The served registry's MLflow and datasets, with an artifact store (and inference log) of
    the test's own."""
    from prefect_mlops.mlops.settings import get_settings

    for name, value in served_registry["env"].items():
        monkeypatch.setenv(name, value)
    store = tmp_path / "store"
    monkeypatch.setenv("MLOPS_ARTIFACT_STORE", str(store))
    get_settings.cache_clear()
    yield store
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def served_registry_xgboost(tmp_path_factory, fraud_file, prefect_api):
    """The same as ``served_registry``, an XGBoost model (``training.family: xgboost``)."""
    return pipeline_registry(tmp_path_factory.mktemp("xgboost-home"), fraud_file, "xgboost")


@pytest.fixture(scope="session", params=["lightgbm", "xgboost"])
def scoring_registry(request):
    """``served_registry`` and ``served_registry_xgboost`` in turn: tests of what every family
    must answer alike (the scoring protocol, bundles)."""
    names = {"lightgbm": "served_registry", "xgboost": "served_registry_xgboost"}
    return request.getfixturevalue(names[request.param])


def jsonable_rows(frame) -> list[dict]:
    """Rows as a JSON client sends them (``dataframe_records``): dates as ISO text, nulls as None."""
    frame = frame.copy()
    for column in frame.select_dtypes(include=["datetime", "datetimetz"]).columns:
        frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def markdown_artifacts(flow_run_id) -> dict[str, str]:
    """The Prefect markdown artifacts a flow run created, by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return {a.key: a.data for a in found if a.type == "markdown"}


# ---------------------------------------------------------------- faults


MODEL_DAMAGE = ("truncated", "malformed-leaf")
"""Ways a model file gets damaged that crash LightGBM's parser (SIGABRT or SIGSEGV)."""


def register_files(client, name: str, folder: Path, experiment: str = "fraud-detection") -> str:
    """A new version of ``name`` holding the files of ``folder``, logged to a run of its own in
    ``experiment`` (inside its artifact location, as the pipeline logs models). Returns it."""
    found = client.get_experiment_by_name(experiment)
    run = client.create_run(found.experiment_id)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    source = f"{run.info.artifact_uri}/model"
    return str(client.create_model_version(name, source, run.info.run_id).version)


def damaged_copy(client, name: str, version: str, kind: str, workdir: Path) -> Path:
    """The files of ``name`` ``version`` with ``model.txt`` cut in half (``truncated``) or a
    word among a leaf line's numbers (``malformed-leaf``); returns their folder."""
    from prefect_mlops.model_registry.registry import download_version

    local = download_version(client, name, version, str(workdir), client.tracking_uri)
    model_txt = next(local.rglob("model.txt"))
    text = model_txt.read_text()
    if kind == "truncated":
        model_txt.write_text(text[: len(text) // 2])
    else:
        lines = text.split("\n")
        leaf = next(i for i, line in enumerate(lines) if line.startswith("leaf_value="))
        lines[leaf] = "leaf_value=0.1 abc"
        model_txt.write_text("\n".join(lines))
    return local


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """A folder nobody can write to: no write bit, and immutable when we are root."""
    path.mkdir()
    path.chmod(0o555)
    immutable = os.geteuid() == 0 and shutil.which("chattr") is not None
    if immutable:
        subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True)
    try:
        if _writable(path):
            pytest.skip(f"cannot make {path} read-only here (root without chattr +i)")
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)
        path.chmod(0o755)


def _writable(path: Path) -> bool:
    try:
        (path / "probe").touch()
    except OSError:
        return False
    (path / "probe").unlink()
    return True


# ---------------------------------------------------------------- server processes


def wait_healthy(url: str, process: subprocess.Popen, seconds: float = 120) -> None:
    """Poll ``url`` until it answers 200; fail at once if ``process`` exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server behind {url} exited ({process.returncode})"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {seconds:.0f}s")


@contextlib.contextmanager
def started(
    command: list[str], env: dict[str, str], log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen]:
    """``command`` in its own process group, output to ``log``; the group stopped after."""
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, home: Path) -> Iterator[str]:
    """A real MLflow tracking server on a free loopback port; yields its URL."""
    from prefect_mlops.infra.environment import QUIET_ENVIRONMENT
    from prefect_mlops.infra.mlflow_server import mlflow_server_launch
    from prefect_mlops.mlops.settings import Settings
    from tests.ports import free_port

    port = free_port()
    launch = mlflow_server_launch(
        Settings(home=home, mlflow_backend_store_uri=backend_store_uri), "127.0.0.1", port
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= QUIET_ENVIRONMENT | launch.env
    with started(launch.command, env, home / f"mlflow-{port}.log", cwd=home) as process:
        wait_healthy(f"http://127.0.0.1:{port}/health", process)
        yield f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------- the production profile

PREFECT_AUTH = "admin:prefect-test-secret"
MLFLOW_USER, MLFLOW_PASSWORD = "admin", "mlflow-test-secret"


@dataclass(frozen=True)
class Servers:
    """The production profile's two servers, as their clients reach them."""

    prefect_api: str
    mlflow: str
    history_url: str
    home: Path
    """The servers' state folder; MLflow keeps the artifacts under ``artifact_root``."""

    @property
    def artifact_root(self) -> Path:
        """Where the MLflow server stores what clients upload through it."""
        return self.home / "mlflow-artifacts"

    def client_env(self) -> dict[str, str]:
        """What a process needs to reach both servers as an authenticated user."""
        return {
            "PREFECT_API_URL": self.prefect_api,
            "PREFECT_API_AUTH_STRING": PREFECT_AUTH,
            "MLFLOW_TRACKING_URI": self.mlflow,
            "MLFLOW_TRACKING_USERNAME": MLFLOW_USER,
            "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
        }


def clean_env(home: Path) -> dict[str, str]:
    """This process's environment without its Prefect/MLflow settings (the test harness's)."""
    from prefect_mlops.infra.environment import QUIET_ENVIRONMENT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | QUIET_ENVIRONMENT | {"MLOPS_HOME": str(home), "PREFECT_HOME": str(home / "p")}


@contextlib.contextmanager
def production_servers(postgres) -> Iterator[Servers]:
    """Prefect and MLflow servers configured as ``infra/docker/compose.yaml`` runs them.

    Both on PostgreSQL (fresh databases on ``postgres``) and behind their authentication, the
    Prefect UI on, MLflow proxying artifacts to a folder; on loopback, in a temp folder that
    is deleted once both have stopped.
    """
    from prefect_mlops.infra.mlflow_server import mlflow_server_launch
    from prefect_mlops.mlops.settings import Settings
    from tests.ports import free_port

    home = Path(tempfile.mkdtemp(prefix="mlops-production-"))
    prefect_port, mlflow_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]  # the PostgreSQL server is the session's: names must not clash
    prefect_env = clean_env(home) | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres.url(f"prefect_{suffix}", "+asyncpg"),
        "PREFECT_SERVER_API_AUTH_STRING": PREFECT_AUTH,
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{prefect_port}/api",
    }
    postgres.create_database(f"prefect_{suffix}")
    settings = Settings(
        home=home,
        mlflow_backend_store_uri=postgres.create_database(f"mlflow_{suffix}"),
        mlflow_auth_database_url=postgres.create_database(f"mlflow_auth_{suffix}"),
        mlflow_artifacts_destination=str(home / "mlflow-artifacts"),
        mlflow_admin_username=MLFLOW_USER,
        mlflow_admin_password=MLFLOW_PASSWORD,
    )
    mlflow = mlflow_server_launch(settings, "127.0.0.1", mlflow_port)
    assert mlflow.authenticated and "--app-name" in mlflow.command
    prefect_command = [str(Path(sys.executable).parent / "prefect"), "server", "start"]
    prefect_command += ["--host", "127.0.0.1", "--port", str(prefect_port)]
    try:
        with (
            started(prefect_command, prefect_env, home / "prefect.log") as prefect_server,
            started(mlflow.command, clean_env(home) | mlflow.env, home / "mlflow.log")
            as mlflow_server,
        ):  # fmt: skip
            wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health", prefect_server)
            wait_healthy(f"http://127.0.0.1:{mlflow_port}/health", mlflow_server)
            yield Servers(
                prefect_api=f"http://127.0.0.1:{prefect_port}/api",
                mlflow=f"http://127.0.0.1:{mlflow_port}",
                history_url=postgres.create_database(f"allocator_{suffix}"),
                home=home,
            )
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def servers(postgres) -> Iterator[Servers]:
    """The production profile (``production_servers``), one pair per test module."""
    with production_servers(postgres) as running:
        yield running


# ---------------------------------------------------------------- reliability figures


@pytest.fixture
def figures(request) -> Figures:
    """Where a failure scenario records what was injected, what held and the numbers.

    Any test may record (mark it ``reliability`` so ``make reliability`` runs it); the figures
    become ``docs/reliability.md``. A scenario that fails is written down as not held, with
    its failure, even if it had recorded success before the assertion that failed.
    """
    recorder = Figures(request.node.nodeid)
    request.node.figures = recorder
    return recorder


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    recorder = getattr(item, "figures", None)
    if recorder is not None and report.when == "call" and report.failed:
        recorder.failed(str(call.excinfo.value) if call.excinfo else report.longreprtext)
    return report
