"""The inference log: what a flush writes (Parquet by date, or SQL), and what the monitor reads back."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pandas as pd
import pytest

from prefect_mlops.mlops.feedback import load_feedback
from prefect_mlops.serving.inference_log import InferenceLog, request_id
from prefect_mlops.serving.log_reader import load_parquet_window, load_sql_window
from prefect_mlops.serving.log_sinks import ParquetSink, SqlSink

MODEL = SimpleNamespace(name="fraud", version="4")
START = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
JSON = "application/json"


def exported(log) -> dict[str, float]:
    """The log's samples as /metrics exports them, by name."""
    return {s.name: s.value for family in log.metric_families() for s in family.samples}


def record_three_requests(log: InferenceLog) -> None:
    """A JSON request of two rows, a CSV one, and a JSON one without the optional column."""
    split = {
        "columns": ["amount", "when", "kind"],
        "data": [[1, "2025-01-01T00:00:00", "a"], [2.5, None, None]],
    }
    log.record(
        "req-1",
        MODEL,
        orjson.dumps({"dataframe_split": split}),
        JSON,
        2,
        {"prediction": np.array(["0", "1"], dtype=object), "probability": np.array([0.1, 0.9])},
    )
    log.record(
        "req-2",
        MODEL,
        b"amount,when,kind\n7.0,2025-02-01T10:00:00,\n",
        "text/csv",
        1,
        {"prediction": np.array(["0"], dtype=object), "probability": np.array([0.2])},
    )
    log.record(
        "req-3",
        MODEL,
        orjson.dumps({"dataframe_records": [{"amount": 3.0, "when": "2025-03-01T00:00:00"}]}),
        JSON,
        1,
        {"prediction": np.array(["1"], dtype=object), "probability": np.array([0.7])},
    )


def test_a_flush_writes_one_parquet_file_per_version_and_day_with_every_row(tmp_path):
    log = InferenceLog(ParquetSink(str(tmp_path / "log")))
    record_three_requests(log)
    (written,) = log.flush()

    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert re.search(rf"/log/fraud/date={today}/\d{{6}}-v4-[0-9a-f]{{8}}\.parquet$", written)
    assert not list((tmp_path / "log").rglob(".*"))  # no temporary file left behind
    rows, skipped = load_parquet_window(str(tmp_path / "log"), "fraud", START)
    assert skipped == []
    assert rows["request_id"].tolist() == ["req-1", "req-1", "req-2", "req-3"]
    assert rows["row"].tolist() == [0, 1, 0, 0]
    assert rows["input.amount"].tolist() == [1.0, 2.5, 7.0, 3.0]
    assert rows["input.kind"][0] == "a"
    assert rows["input.kind"][1:].isna().all()  # null in JSON, empty in CSV, column left out
    assert rows["output.probability"].tolist() == [0.1, 0.9, 0.2, 0.7]
    assert set(rows["version"]) == {"4"}
    assert (log.counters.written_rows, log.counters.files, log.flush()) == (4, 1, [])


def test_queued_requests_are_converted_then_written_together(tmp_path):
    log = InferenceLog(ParquetSink(str(tmp_path)))
    record_three_requests(log)
    assert log.convert() == 4 and not list(tmp_path.rglob("*.parquet"))  # converted, not written
    record_three_requests(log)
    assert log.convert() == 4
    (written,) = log.write(log.take())  # one file holds both rounds
    requests = pd.read_parquet(written)  # one row per request, the body as it came
    assert (len(requests), requests["rows"].sum()) == (6, 8)
    assert requests["content_type"].tolist()[:2] == [JSON, "text/csv"]
    assert log.flush() == [] and log.counters.written_rows == 8


def test_the_sql_sink_writes_rows_the_monitor_reads_back(database_url):
    url = database_url()
    log = InferenceLog(SqlSink(url))
    record_three_requests(log)
    log.flush()

    rows = load_sql_window(url, "fraud", START)
    assert rows["request_id"].tolist() == ["req-1", "req-1", "req-2", "req-3"]
    assert rows["input.amount"].tolist() == [1.0, 2.5, 7.0, 3.0]
    assert rows["output.prediction"].tolist() == ["0", "1", "0", "1"]
    assert str(rows["logged_at"].dt.tz) == "UTC"
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    assert load_sql_window(url, "fraud", later).empty  # the window bounds the rows
    assert load_sql_window(database_url(), "fraud", START).empty


def test_sampling_the_bounded_queue_and_a_failing_sink_never_raise(tmp_path, caplog):
    silent = InferenceLog(ParquetSink(str(tmp_path)), sample_rate=0.0)
    record_three_requests(silent)
    assert silent.counters.recorded_rows == 0

    small = InferenceLog(ParquetSink(str(tmp_path)), max_buffer_rows=3)
    record_three_requests(small)
    assert (small.counters.recorded_rows, small.counters.dropped_rows) == (3, 1)

    class Broken:
        def write(self, key, table):
            raise OSError("disk full")

    broken = InferenceLog(Broken())
    record_three_requests(broken)
    with caplog.at_level(logging.ERROR):
        assert broken.flush() == []
    # the rows are kept for the next write, not dropped
    assert (broken.counters.write_errors, broken.counters.dropped_rows) == (1, 0)
    assert broken.counters.pending_rows == 4 and broken.converted.rows == 4
    assert "Could not write 4 inference-log rows (kept for the next write" in caplog.text
    assert "disk full" in caplog.text
    assert exported(broken)["mlops_inference_log_pending_rows"] == 4


def test_bad_and_partial_files_are_skipped_with_a_warning(tmp_path, caplog):
    root = tmp_path / "log"
    log = InferenceLog(ParquetSink(str(root)))
    record_three_requests(log)
    (good,) = log.flush()
    folder = root / "fraud" / good.split("/fraud/")[1].split("/")[0]
    (folder / "truncated.parquet").write_bytes(Path(good).read_bytes()[:100])
    pd.DataFrame({"x": [1]}).to_parquet(folder / "foreign.parquet")
    (folder / ".in-progress.parquet.tmp").write_bytes(b"PAR1")  # a write still under way

    with caplog.at_level(logging.WARNING):
        rows, skipped = load_parquet_window(str(root), "fraud", START)

    assert len(rows) == 4
    assert len(skipped) == 2
    assert any("truncated.parquet: not a readable Parquet file" in s for s in skipped)
    assert any("foreign.parquet: not an inference-log file" in s for s in skipped)
    assert caplog.text.count("Skipping inference-log file") == 2


def test_feedback_files_give_labels_by_request_and_row(tmp_path, caplog):
    folder = tmp_path / "feedback" / "fraud"
    folder.mkdir(parents=True)
    (folder / "a.csv").write_text("request_id,row,label\nreq-1,0,0\nreq-1,1,1\n")
    (folder / "b.csv").write_text("request_id,label\nreq-2,1\n")  # row defaults to 0
    (folder / "c.csv").write_text("id,outcome\nreq-3,1\n")
    with caplog.at_level(logging.WARNING):
        labels, skipped = load_feedback(str(folder))
    assert labels.to_dict("records") == [
        {"request_id": "req-1", "row": 0, "label": "0"},
        {"request_id": "req-1", "row": 1, "label": "1"},
        {"request_id": "req-2", "row": 0, "label": "1"},
    ]
    assert len(skipped) == 1 and "c.csv: columns ['request_id', 'label'] are missing" in skipped[0]


@pytest.mark.parametrize(
    ("header", "kept"), [("abc-123", True), (None, False), ("x" * 200, False), ("a\nb", False)]
)
def test_a_usable_client_request_id_is_kept_else_one_is_made(header, kept):
    made = request_id(header)
    assert (made == header) is kept
    assert len(made) <= 128
