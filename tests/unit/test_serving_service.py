"""The serving service assembled from settings, and simulated traffic's delayed labels."""

from __future__ import annotations

import logging

import orjson
import pandas as pd
import pytest
from starlette.testclient import TestClient

from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.feedback import write_feedback
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.mlops.storage import artifact_store
from prefect_mlops.model_registry.registry import ModelReferenceError
from prefect_mlops.serving.access_log import LOGGER
from prefect_mlops.serving.app import build_app
from prefect_mlops.serving.service import build_service, inference_log_target, serving_limits
from prefect_mlops.serving.traffic import TrafficResult, feedback_frame


def test_a_file_is_refused_as_a_model_with_bad_input_exit_status(tmp_path):
    with pytest.raises(ModelReferenceError, match="not a registered model") as refused:
        build_service(Settings(home=tmp_path), "./model.pkl")
    assert refused.value.exit_code == 2


def test_a_sql_inference_log_without_its_url_is_a_config_error(tmp_path):
    settings = Settings(home=tmp_path, inference_log="sql")
    with pytest.raises(ConfigError, match="MLOPS_INFERENCE_LOG_URL"):
        build_service(settings, "fraud-detector")


def test_the_service_waits_for_its_first_version_with_the_settings_limits(tmp_path):
    settings = Settings(
        home=tmp_path, inference_log="off", serving_max_in_flight=7, serving_admin_token="t"
    )
    service = build_service(settings, "fraud-detector@champion")
    assert service.state.model is None and service.log is None
    assert service.state.limits == serving_limits(settings)
    assert (service.state.limits.max_in_flight, service.state.limits.admin_token) == (7, "t")


def test_the_inference_log_target_is_its_folder_or_its_database(tmp_path):
    parquet = Settings(home=tmp_path)
    assert inference_log_target(parquet) == artifact_store(parquet).inference_log_root
    sql = Settings(home=tmp_path, inference_log="sql", inference_log_url="sqlite:///x.db")
    assert inference_log_target(sql) == "sqlite:///x.db"


def test_delayed_labels_are_written_one_row_per_scored_row(tmp_path):
    sent = TrafficResult(request_ids=["a", "b"], labels=[["1"], ["0", "1"]])
    folder = artifact_store(Settings(home=tmp_path)).feedback_folder("fraud-detector")
    where = write_feedback(folder, feedback_frame(sent))
    assert where.startswith(f"{folder}/") and where.endswith(".csv")
    written = pd.read_csv(where, dtype=str)
    assert written.to_dict("records") == [
        {"request_id": "a", "row": "0", "label": "1"},
        {"request_id": "b", "row": "0", "label": "0"},
        {"request_id": "b", "row": "1", "label": "1"},
    ]


class Lines(logging.Handler):
    """The access log's lines, parsed."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(orjson.loads(record.getMessage()) | {"record": record.levelname})


def access_lines(settings: Settings) -> list[dict]:
    """The lines a waiting service writes for GET /health (200), /nope (404) and a POST to
    /invocations (503: no model yet)."""
    service = build_service(settings, "fraud-detector")
    handler, logger = Lines(), logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        with TestClient(build_app(service.state, service.swapper)) as client:
            client.get("/health")
            client.get("/nope")
            client.post("/invocations", json={"dataframe_records": [{"a": 1}]})
    finally:  # leaving the block stopped the access log: every line is written
        logger.removeHandler(handler)
    return handler.lines


def test_the_access_log_level_setting_chooses_which_requests_get_a_line(tmp_path, monkeypatch):
    every = access_lines(Settings(home=tmp_path, inference_log="off"))  # the default: info
    assert [(x["path"], x["status"], x["level"]) for x in every] == [
        ("/health", 200, "info"),
        ("/nope", 404, "warning"),
        ("/invocations", 503, "error"),
    ]
    assert [x["record"] for x in every] == ["INFO", "WARNING", "ERROR"]
    assert set(every[0]) == {
        "time", "level", "method", "path", "status", "latency_ms", "request_id",
        "model_version", "rows", "client", "record",
    }  # fmt: skip

    monkeypatch.setenv("MLOPS_SERVING_ACCESS_LOG_LEVEL", "WARNING")
    refused = access_lines(Settings(home=tmp_path, inference_log="off"))
    assert [(x["path"], x["status"]) for x in refused] == [("/nope", 404), ("/invocations", 503)]

    monkeypatch.setenv("MLOPS_SERVING_ACCESS_LOG_LEVEL", "off")
    assert access_lines(Settings(home=tmp_path, inference_log="off")) == []
    with pytest.raises(ValueError, match="serving_access_log_level"):
        Settings(home=tmp_path, serving_access_log_level="loud")
