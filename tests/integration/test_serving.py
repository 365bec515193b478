"""The serving service on real registered models: MLflow's protocol, equal predictions, bad input.

The scoring protocol is tested on a model of each family (``scoring_registry``): a LightGBM
and an XGBoost fraud model answer alike."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import httpx
import numpy as np
import orjson
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from starlette.testclient import TestClient

from prefect_mlops.serving.app import ServingLimits, ServingState, build_app
from prefect_mlops.serving.loader import ModelLoadError, load_served_model
from tests.fixtures import MODEL_DAMAGE, damaged_copy, register_files
from tests.integration.conftest import serving_process
from tests.ports import free_port

JSON_TYPE = {"Content-Type": "application/json"}


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def client(scoring_registry):
    limits = ServingLimits(max_body_bytes=2**20, max_in_flight=64)
    with TestClient(build_app(ServingState(scoring_registry["served"], limits))) as test_client:
        yield test_client


def as_frame(response) -> pd.DataFrame:
    assert response.status_code == 200, response.text
    return pd.DataFrame(response.json()["predictions"])


def assert_same(predicted: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert list(predicted.columns) == list(expected.columns)
    assert (predicted["prediction"].astype(str) == expected["prediction"].astype(str)).all()
    np.testing.assert_allclose(predicted["probability"], expected["probability"], rtol=1e-9)


def jsonable(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows as a JSON client sends them: dates as ISO text, missing values as null."""
    frame = frame.copy()
    for column in frame.select_dtypes(include=["datetime", "datetimetz"]).columns:
        frame[column] = frame[column].dt.strftime("%Y-%m-%dT%H:%M:%S")
    return frame.astype(object).where(frame.notna(), None)


def test_every_mlflow_input_format_predicts_like_the_registry_model(client, scoring_registry):
    rows, expected = scoring_registry["rows"], scoring_registry["expected"]
    assert scoring_registry["served"].predictor.facts.family == scoring_registry["family"]
    plain = jsonable(rows)
    split = {"columns": list(rows.columns), "data": plain.to_numpy().tolist()}
    records = plain.to_dict(orient="records")
    bodies = {
        "dataframe_split": {"dataframe_split": split},
        "dataframe_records": {"dataframe_records": records},
        "instances": {"instances": records},
        "inputs (records)": {"inputs": records},
        "inputs (columns)": {"inputs": {c: plain[c].tolist() for c in rows.columns}},
    }
    for name, body in bodies.items():
        response = client.post(
            "/invocations", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert response.headers["X-Model-Version"] == scoring_registry["version"], name
        assert_same(as_frame(response), expected)
    csv = client.post(
        "/invocations", content=rows.to_csv(index=False), headers={"Content-Type": "text/csv"}
    )
    assert_same(as_frame(csv), expected)
    one = client.post("/invocations", json={"dataframe_records": records[:1]})
    assert_same(as_frame(one), expected.head(1))


def test_health_version_ping_and_metrics(client, scoring_registry):
    assert client.get("/ping").status_code == 200
    health = client.get("/health").json()
    assert (health["status"], health["model"], health["version"]) == (
        "ok",
        "fraud-detector",
        scoring_registry["version"],
    )
    assert client.get("/version").json()["run_id"] == scoring_registry["served"].run_id
    client.post(
        "/invocations",
        json={
            "dataframe_records": jsonable(scoring_registry["rows"].head(3)).to_dict(
                orient="records"
            )
        },
    )
    client.post("/invocations", content=b"{", headers={"Content-Type": "application/json"})
    metrics = client.get("/metrics")
    assert metrics.headers["X-Model-Version"] == scoring_registry["version"]
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }
    for status in ("200", "400"):
        labels = (("path", "/invocations"), ("status", status))
        assert samples[("mlops_serving_requests_total", labels)] == 1
        assert samples[("mlops_serving_request_duration_seconds_count", labels)] == 1
    assert samples[("mlops_serving_rows_total", ())] == 3
    model = (("model", "fraud-detector"),)
    assert samples[("mlops_serving_model_version", model)] == int(scoring_registry["version"])


def test_bad_requests_get_a_json_4xx_naming_the_problem(client, scoring_registry):
    row = jsonable(scoring_registry["rows"].head(1)).to_dict(orient="records")[0]
    numeric = scoring_registry["served"].spec.numeric[0]
    dropped = {k: v for k, v in row.items() if k != numeric}
    cases = [
        (b"{not json", "application/json", 400, "not valid JSON"),
        (b"[1, 2]", "application/json", 400, "must be an object"),
        (orjson.dumps({"rows": [row]}), "application/json", 400, "exactly one of"),
        (orjson.dumps({"dataframe_records": []}), "application/json", 400, "no rows"),
        (
            orjson.dumps({"dataframe_records": [dropped]}),
            "application/json",
            400,
            f"missing column(s) ['{numeric}']",
        ),
        (
            orjson.dumps({"dataframe_records": [row | {"colour": "red"}]}),
            "application/json",
            400,
            "unexpected column(s) ['colour']",
        ),
        (
            orjson.dumps({"dataframe_records": [row | {numeric: "lots"}]}),
            "application/json",
            400,
            f"Column '{numeric}' must be numeric; row 0 has 'lots'",
        ),
        (
            orjson.dumps({"dataframe_split": {"columns": ["a"]}}),
            "application/json",
            400,
            "needs 'columns' and 'data'",
        ),
        (b"", "text/csv", 400, "CSV body is empty"),
        (b"a,b\n1,2\n", "text/plain", 415, "not supported"),
        (b"x" * (2**20 + 1), "application/json", 413, "limit is"),
    ]
    for body, content_type, status, message in cases:
        response = client.post("/invocations", content=body, headers={"Content-Type": content_type})
        assert response.status_code == status, (message, response.text)
        error = response.json()
        assert message in error["message"], (message, error)
        assert (
            error["error_code"]
            and response.headers["X-Model-Version"] == scoring_registry["version"]
        )
    assert client.get("/ping").status_code == 200  # still up


def rows_body(served_registry, rows: int) -> bytes:
    frame = jsonable(served_registry["rows"].head(rows))
    split = {"columns": list(frame.columns), "data": frame.to_numpy().tolist()}
    return orjson.dumps({"dataframe_split": split})


async def poll_until(check, deadline_s: float = 30) -> None:
    """Until ``await check()`` is true."""
    deadline = time.monotonic() + deadline_s
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_overload_is_refused_with_retry_after(served_registry):
    """Two real overloads, in the service's own event loop: a burst of requests longer than
    the latency budget to serve, and every scoring slot taken while the worker threads are
    all busy."""
    limits = ServingLimits(max_in_flight=1, latency_budget_ms=50)
    state = ServingState(served_registry["served"], limits)
    app = build_app(state)
    small, large = rows_body(served_registry, 1), rows_body(served_registry, 300)
    assert len(large) > limits.inline_bytes  # scored in a worker thread
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://serving") as client,
    ):

        async def scores(body: bytes) -> httpx.Response:
            return await client.post("/invocations", content=body, headers=JSON_TYPE)

        async def let_in() -> bool:
            return (await scores(small)).status_code == 200

        await anyio.sleep(0)  # the lifespan's tasks (the lag probe among them) start
        assert await let_in()
        burst: list[httpx.Response] = []

        async def one_of_the_burst() -> None:
            burst.append(await scores(small))

        async with anyio.create_task_group() as tasks:  # 400 at once: one long turn of the loop
            for _ in range(400):
                tasks.start_soon(one_of_the_burst)
        refused = [r for r in burst if r.status_code == 503]
        assert refused and {r.status_code for r in burst} == {200, 503}
        assert {r.headers["Retry-After"] for r in refused} == {"1"}
        assert refused[0].json()["error_code"] == "OVERLOADED"
        assert "latency budget" in refused[0].json()["message"]
        assert refused[0].headers["X-Model-Version"] == served_registry["version"]
        await poll_until(let_in)  # the loop caught up

        threads = anyio.to_thread.current_default_thread_limiter()
        holders = [object() for _ in range(int(threads.total_tokens))]
        for holder in holders:  # every worker thread busy elsewhere
            await threads.acquire_on_behalf_of(holder)
        first: list[httpx.Response] = []

        async def first_request() -> None:
            first.append(await scores(large))

        async def slot_taken() -> bool:
            return state.in_flight == 1  # the first request holds it, waiting for a thread

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first_request)
            await poll_until(slot_taken)
            second = await scores(large)
            for holder in holders:
                threads.release_on_behalf_of(holder)
        assert second.status_code == 503 and second.headers["Retry-After"] == "1"
        assert "MLOPS_SERVING_MAX_IN_FLIGHT" in second.json()["message"]
        assert first[0].status_code == 200 and len(first[0].json()["predictions"]) == 300
    assert state.in_flight == 0 and state.bodies.held == 0


def test_unknown_paths_and_methods_get_mlflow_json_errors_with_the_version(
    client, scoring_registry
):
    version = scoring_registry["version"]
    missing = client.get("/nope")
    assert missing.status_code == 404 and missing.headers["X-Model-Version"] == version
    assert missing.json() == {
        "error_code": "ENDPOINT_NOT_FOUND",
        "message": "There is no endpoint /nope; /openapi.json lists them.",
    }
    wrong = client.get("/invocations")
    assert wrong.status_code == 405 and wrong.headers["X-Model-Version"] == version
    assert wrong.headers["Allow"] == "POST" and wrong.json()["error_code"] == "METHOD_NOT_ALLOWED"
    assert "GET is not allowed on /invocations; use POST" in wrong.json()["message"]

    waiting = ServingState(None, reference="fraud-detector")
    with TestClient(build_app(waiting)) as no_model:
        ping = no_model.get("/ping")
        assert ping.status_code == 503 and ping.json()["error_code"] == "NO_MODEL"
        assert "X-Model-Version" not in ping.headers  # no model: no version to name
        assert no_model.delete("/ping").json()["error_code"] == "METHOD_NOT_ALLOWED"


def test_unknown_model_is_a_clear_error(served_registry):
    uri = served_registry["uri"]
    with pytest.raises(ModelLoadError, match="model 'nope' has no alias 'champion'"):
        load_served_model(MlflowClient(uri, registry_uri=uri), "nope", uri)


def test_mlops_serve_answers_on_loopback(scoring_registry):
    port = free_port()
    env = os.environ | scoring_registry["env"]
    with serving_process("fraud-detector", port, env):
        rows = jsonable(scoring_registry["rows"].head(20))
        body = {
            "dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}
        }
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json=body, timeout=10)
        assert_same(as_frame(response), scoring_registry["expected"].head(20))
    mlops = str(Path(sys.executable).parent / "mlops")
    missing = subprocess.run(
        [mlops, "serve", "nope"], env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2 and "model 'nope' has no alias 'champion'" in missing.stderr


def test_champion_moves_are_hot_swapped_and_a_broken_version_is_refused(served_registry, tmp_path):
    from prefect_mlops.serving.swap import ModelSwapper

    uri = served_registry["uri"]
    registry_client = MlflowClient(uri, registry_uri=uri)
    original = served_registry["served"]
    state = ServingState(original, ServingLimits(admin_token="s3cret"))
    swapper = ModelSwapper(
        state,
        "fraud-detector@champion",
        lambda: MlflowClient(uri, registry_uri=uri),
        lambda c, ref: load_served_model(c, ref, uri),
    )
    body = {
        "dataframe_records": jsonable(served_registry["rows"].head(5)).to_dict(orient="records")
    }
    admin = {"Authorization": "Bearer s3cret"}
    with TestClient(build_app(state, swapper)) as client:
        assert client.post("/admin/reload").status_code == 401
        assert (
            client.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert client.post("/admin/reload", headers=admin).json()["status"] == "unchanged"

        # A broken version (not a pipeline model) becomes champion: refused, the old one serves.
        (tmp_path / "broken").mkdir()
        (tmp_path / "broken" / "note.txt").write_text("not a model")
        broken = register_files(registry_client, "fraud-detector", tmp_path / "broken")
        registry_client.set_registered_model_alias("fraud-detector", "champion", broken)
        refused = client.post("/admin/reload", headers=admin)
        assert refused.status_code == 409 and refused.json()["status"] == "failed"
        assert "not a pipeline model" in client.get("/health").json()["last_reload_error"]
        still = client.post("/invocations", json=body)
        assert still.status_code == 200 and still.headers["X-Model-Version"] == original.version

        # A good new version (the same model registered again) is swapped in.
        # MLflow's SQL registry resolves a models:/m-... source through the process-wide
        # tracking URI (not this client's): give it the logged model's storage location.
        source = registry_client.get_model_version("fraud-detector", original.version).source
        model_id = source.removeprefix("models:/")
        location = registry_client.get_logged_model(model_id).artifact_location
        good = registry_client.create_model_version("fraud-detector", location, original.run_id)
        registry_client.set_registered_model_alias("fraud-detector", "champion", good.version)
        swapped = client.post("/admin/reload", headers=admin).json()
        assert swapped == {"status": "swapped", "version": str(good.version), "error": None}
        after = client.post("/invocations", json=body)
        assert after.headers["X-Model-Version"] == str(good.version)
        assert_same(as_frame(after), served_registry["expected"].head(5))
        assert client.get("/health").json()["last_reload_error"] is None
    registry_client.set_registered_model_alias("fraud-detector", "champion", original.version)


def register_damaged(registry_client: MlflowClient, version: str, kind: str, workdir: Path) -> str:
    """A copy of ``version`` with a damaged model.txt (see ``tests.fixtures.damaged_copy``)."""
    folder = damaged_copy(registry_client, "fraud-detector", version, kind, workdir)
    return register_files(registry_client, "fraud-detector", folder)


class Traffic(threading.Thread):
    """Single-row requests one after another, recording each answer's status and version."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.answers, self.errors = url, body, [], []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                try:
                    reply = http.post(f"{self.url}/invocations", json=self.body)
                except httpx.TransportError as error:
                    self.errors.append(repr(error))
                    return
                self.answers.append((reply.status_code, reply.headers.get("X-Model-Version")))

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 120
        while len(self.answers) < count and not self.errors:
            assert time.monotonic() < deadline, "the traffic stalled"
            time.sleep(0.05)


def test_a_corrupt_model_file_never_takes_a_real_server_down(served_registry, tmp_path):
    """A damaged model.txt makes LightGBM abort the process that parses it: a real `mlops
    serve` checks it in a child process, refuses it, and keeps serving the old version."""
    uri = served_registry["uri"]
    registry_client = MlflowClient(uri, registry_uri=uri)
    original = served_registry["version"]
    registry_client.set_registered_model_alias("fraud-detector", "corrupt-test", original)
    port = free_port()
    env = os.environ | served_registry["env"] | {"MLOPS_SERVING_ADMIN_TOKEN": "s3cret"}
    row = jsonable(served_registry["rows"].head(1)).to_dict(orient="records")
    admin = {"Authorization": "Bearer s3cret"}
    url = f"http://127.0.0.1:{port}"
    with serving_process("fraud-detector@corrupt-test", port, env) as server:
        traffic = Traffic(url, {"dataframe_records": row})
        traffic.start()
        for kind in MODEL_DAMAGE:
            damaged = register_damaged(registry_client, original, kind, tmp_path / kind)
            registry_client.set_registered_model_alias("fraud-detector", "corrupt-test", damaged)
            before = len(traffic.answers)
            refused = httpx.post(f"{url}/admin/reload", headers=admin, timeout=120)
            traffic.wait_for(before + 20)  # and it goes on answering after
            assert refused.status_code == 409, (kind, refused.text)
            error = refused.json()["error"]
            assert f"fraud-detector version {damaged}" in error and "crashed (SIG" in error, error
            health = httpx.get(f"{url}/health", timeout=10).json()
            assert health["version"] == original and health["last_reload_error"] == error
            assert server.poll() is None, kind  # the serving process is alive
        traffic.stop.set()
        traffic.join(timeout=30)
    assert not traffic.errors, traffic.errors
    assert {status for status, _ in traffic.answers} == {200}
    assert {version for _, version in traffic.answers} == {original}  # during and after


def test_reloading_is_off_without_a_token(client):
    assert client.post("/admin/reload", headers={"Authorization": "Bearer x"}).status_code == 403


# ---------------------------------------------------------------- fuzzing the OpenAPI schema


def fuzz(operation, mode: GenerationMode, examples: int, calls: list) -> None:
    """Send ``examples`` generated requests to one operation; every check must pass."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case) -> None:
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        calls.append((operation.label, response.status_code))

    call()


def test_requests_generated_from_the_openapi_schema_never_get_a_5xx(scoring_registry):
    """Valid and invalid bodies, headers and methods: a documented 2xx/4xx, never a 5xx.

    Schemathesis generates requests from the service's own /openapi.json, for every operation,
    conforming to it and violating it. Every check but positive_data_acceptance runs: the
    schema cannot say that the dates of one request must share a layout, so a schema-valid
    request may rightly get a 400.
    """
    limits = ServingLimits(max_body_bytes=2**16, max_in_flight=64)
    app = build_app(ServingState(scoring_registry["served"], limits))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {o.label for o in operations} >= {"POST /invocations", "POST /admin/reload"}
    calls: list[tuple[str, int]] = []
    for operation in operations:
        # only the POST operations take input that can violate the schema
        modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * (operation.method == "post")
        for mode in modes:
            fuzz(operation, mode, 60 if operation.label == "POST /invocations" else 10, calls)
    statuses = {status for label, status in calls if label == "POST /invocations"}
    assert 200 in statuses and 400 in statuses, statuses  # both kinds really were sent
    assert all(status < 500 for _, status in calls)
