"""What a real `mlops serve` tells its operators: `/metrics` in every state, the access log.

One process is started before its model exists (as `mlops up` starts it) and taken through
every state: waiting, a refused first version, loaded, scored requests (ok and 4xx), a hot
swap, a refused reload. Its `/metrics` must parse with prometheus_client's own parser each
time, and its access log must have one JSON line per answered request.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
from mlflow.tracking import MlflowClient
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures import jsonable_rows, register_files
from tests.ports import free_port

ALIAS = "metrics-test"
ADMIN = {"Authorization": "Bearer s3cret"}


class Client:
    """HTTP calls to the service, each answer remembered for the access-log check."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.answered: list[tuple[str, str, int, str | None]] = []

    def call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        self.answered.append(
            (method, path, response.status_code, response.headers.get("X-Request-Id"))
        )
        return response

    def scrape(self) -> dict[str, list]:
        """``/metrics`` parsed by prometheus_client: samples by family name."""
        response = self.call("GET", "/metrics")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        families = text_string_to_metric_families(response.text)
        return {family.name: family.samples for family in families}


def value(samples: list, name: str | None = None, **labels: str) -> float:
    """The one sample named ``name`` (any, if None) with these labels."""
    matching = [
        s.value for s in samples if name in (None, s.name) and labels.items() <= s.labels.items()
    ]
    assert len(matching) == 1, (labels, samples)
    return matching[0]


def model_state(metrics: dict[str, list]) -> tuple[float, list[float], float]:
    """(loaded, version samples, reload failed) of fraud-detector."""
    return (
        value(metrics["mlops_serving_model_loaded"], model="fraud-detector"),
        [s.value for s in metrics["mlops_serving_model_version"]],
        value(metrics["mlops_serving_reload_failed"], model="fraud-detector"),
    )


def requests(metrics: dict[str, list], path: str, status: str) -> float:
    return value(
        metrics["mlops_serving_requests"], "mlops_serving_requests_total", path=path, status=status
    )


def register_again(registry: MlflowClient, version: str) -> str:
    """A new version of the same model (a good candidate for a hot swap)."""
    source = registry.get_model_version("fraud-detector", version).source
    location = registry.get_logged_model(source.removeprefix("models:/")).artifact_location
    run_id = registry.get_model_version("fraud-detector", version).run_id
    return str(registry.create_model_version("fraud-detector", location, run_id).version)


def wait_answering(client: Client, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        try:
            client.call("GET", "/health")
            return
        except httpx.TransportError:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "mlops serve did not come up"
            time.sleep(0.3)


def test_metrics_parse_in_every_state_and_every_request_is_access_logged(served_registry, tmp_path):
    uri = served_registry["uri"]
    registry = MlflowClient(uri, registry_uri=uri)
    original = served_registry["version"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "note.txt").write_text("not a model")
    broken = register_files(registry, "fraud-detector", tmp_path / "broken")
    port, log = free_port(), tmp_path / "serve.log"
    env = os.environ | served_registry["env"]
    env |= {"MLOPS_SERVING_ADMIN_TOKEN": "s3cret", "MLOPS_SERVING_POLL_S": "0"}
    command = [str(Path(sys.executable).parent / "mlops"), "serve", f"fraud-detector@{ALIAS}"]
    command += ["--wait-for-model", "--port", str(port)]
    client = Client(f"http://127.0.0.1:{port}")
    with log.open("w") as output:
        server = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_answering(client, server, log)
        waiting = client.scrape()  # the alias does not exist yet
        assert model_state(waiting) == (0, [], 1)
        assert "process_cpu_seconds" in waiting and "python_info" in waiting
        assert "mlops_inference_log_recorded_rows" in waiting

        registry.set_registered_model_alias("fraud-detector", ALIAS, broken)
        assert client.call("POST", "/admin/reload", headers=ADMIN).status_code == 409
        assert model_state(client.scrape()) == (0, [], 1)  # the first version was refused

        registry.set_registered_model_alias("fraud-detector", ALIAS, original)
        assert client.call("POST", "/admin/reload", headers=ADMIN).status_code == 200
        assert model_state(client.scrape()) == (1, [int(original)], 0)

        rows = {"dataframe_records": jsonable_rows(served_registry["rows"].head(3))}
        assert client.call("POST", "/invocations", json=rows).status_code == 200
        bad = client.call("POST", "/invocations", content=b"{", headers={"Content-Type": "x"})
        assert bad.status_code == 415
        assert client.call("GET", "/nope").status_code == 404
        served = client.scrape()
        assert requests(served, "/invocations", "200") == 1
        assert requests(served, "/invocations", "415") == 1
        assert requests(served, "(unmatched)", "404") == 1
        assert requests(served, "/admin/reload", "409") == 1
        assert value(served["mlops_serving_rows"], "mlops_serving_rows_total") == 3
        duration = served["mlops_serving_request_duration_seconds"]
        scored = {"path": "/invocations", "status": "200"}
        count = value(duration, "mlops_serving_request_duration_seconds_count", **scored)
        assert count == 1
        assert value(served["mlops_serving_errors"], "mlops_serving_errors_total") >= 3

        swapped = register_again(registry, original)
        registry.set_registered_model_alias("fraud-detector", ALIAS, swapped)
        assert client.call("POST", "/admin/reload", headers=ADMIN).json()["status"] == "swapped"
        assert model_state(client.scrape()) == (1, [int(swapped)], 0)

        registry.set_registered_model_alias("fraud-detector", ALIAS, broken)
        assert client.call("POST", "/admin/reload", headers=ADMIN).status_code == 409
        assert model_state(client.scrape()) == (1, [int(swapped)], 1)  # the old one serves
    finally:
        server.terminate()
        server.wait(timeout=30)
        client.http.close()
        registry.delete_registered_model_alias("fraud-detector", ALIAS)

    lines = [orjson.loads(x) for x in log.read_text().splitlines() if x.startswith("{")]
    assert [(x["method"], x["path"], x["status"], x["request_id"]) for x in lines] == [
        *client.answered
    ]
    scored_line = next(x for x in lines if x["path"] == "/invocations" and x["status"] == 200)
    assert scored_line["model_version"] == original and scored_line["rows"] == 3
    assert scored_line["request_id"] and scored_line["latency_ms"] > 0
    assert scored_line["level"] == "info" and scored_line["client"].startswith("127.0.0.1:")
    refused = next(x for x in lines if x["status"] == 415)
    assert (refused["level"], refused["rows"], refused["model_version"]) == ("warning", 0, original)
    assert {x["level"] for x in lines if x["path"] == "/admin/reload" and x["status"] == 409} == {
        "warning"
    }
