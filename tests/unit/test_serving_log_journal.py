"""The inference log's journal: converted rows survive a crash, are replayed once, and no more."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from prefect_mlops.serving.inference_log import InferenceLog
from prefect_mlops.serving.log_reader import load_parquet_window
from prefect_mlops.serving.log_sinks import ParquetSink
from prefect_mlops.serving.log_spool import LogSpool, read_frames

MODEL = SimpleNamespace(name="fraud", version="4")


def exported(log) -> dict[str, float]:
    """The log's samples as /metrics exports them, by name."""
    return {s.name: s.value for family in log.metric_families() for s in family.samples}


def record(log: InferenceLog, ident: str, rows: int = 1) -> None:
    body = orjson.dumps({"dataframe_records": [{"amount": float(i)} for i in range(rows)]})
    outputs = {"probability": np.linspace(0, 1, rows)}
    log.record(ident, MODEL, body, "application/json", rows, outputs)


def logged_ids(root) -> list[str]:
    import datetime as dt

    start = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    rows, skipped = load_parquet_window(str(root), "fraud", start)
    assert skipped == []
    return sorted(set(rows["request_id"])) if len(rows) else []


def test_converted_rows_are_journaled_and_a_written_batch_deletes_its_journal(tmp_path):
    journal = tmp_path / "journal"
    log = InferenceLog(ParquetSink(str(tmp_path / "log")), spool=LogSpool(journal))
    record(log, "a", 2)
    record(log, "b")
    assert log.convert() == 3
    (path,) = journal.glob("*.journal")
    ((key, table),) = read_frames(path)
    assert key == ("fraud", "4", key[2]) and table.column("request_id").to_pylist() == ["a", "b"]

    log.write(taken := log.take())
    log.done(taken)
    assert list(journal.iterdir()) == [] and logged_ids(tmp_path / "log") == ["a", "b"]
    assert log.counters.pending_rows == 0


def test_a_process_that_dies_unwritten_is_replayed_by_the_next_start(tmp_path):
    """The journal of a process killed before writing: the next log writes it, once."""
    journal, root = tmp_path / "journal", tmp_path / "log"
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from types import SimpleNamespace
        from prefect_mlops.serving.inference_log import InferenceLog
        from prefect_mlops.serving.log_sinks import ParquetSink
        from prefect_mlops.serving.log_spool import LogSpool
        log = InferenceLog(ParquetSink({str(root)!r}), spool=LogSpool(__import__("pathlib").Path({str(journal)!r})))
        model = SimpleNamespace(name="fraud", version="4")
        for i in range(5):
            log.record(f"dead-{{i}}", model, b'{{"dataframe_records": [{{"amount": 1.0}}]}}',
                       "application/json", 1, {{"probability": np.array([0.5])}})
        log.convert()
        log.record("never-converted", model, b"{{}}", "application/json", 1,
                   {{"probability": np.array([0.5])}})
        os.kill(os.getpid(), 9)
        """
    )
    project = str(Path(__file__).resolve().parents[2])
    dead = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"PYTHONPATH": project},
    )
    assert dead.returncode == -9, dead.stderr
    assert len(list(journal.glob("*.journal"))) == 1 and not root.exists()

    log = InferenceLog(ParquetSink(str(root)), spool=LogSpool(journal))
    assert log.recover() == 5 and log.counters.recovered_rows == 5
    record(log, "alive")
    log.flush()
    assert logged_ids(root) == ["alive", *(f"dead-{i}" for i in range(5))]
    assert list(journal.glob("*.journal")) == []
    assert InferenceLog(ParquetSink(str(root)), spool=LogSpool(journal)).recover() == 0


def test_a_live_processs_journal_is_left_alone_and_a_torn_frame_is_cut(tmp_path):
    journal = tmp_path / "journal"
    owner = InferenceLog(ParquetSink(str(tmp_path / "log")), spool=LogSpool(journal))
    record(owner, "mine")
    owner.convert()
    # another instance on the same folder: the file is held, so it is not adopted
    assert InferenceLog(ParquetSink(str(tmp_path / "x")), spool=LogSpool(journal)).recover() == 0

    (path,) = journal.glob("*.journal")
    with open(path, "ab") as torn:  # a crash in the middle of an append
        torn.write(b"MLJ1\x00\x10")
    owner.close()  # the owner lets go without writing (as a killed process does)
    survivor = InferenceLog(ParquetSink(str(tmp_path / "log")), spool=LogSpool(journal))
    assert survivor.recover() == 1
    survivor.flush()
    assert logged_ids(tmp_path / "log") == ["mine"]


def test_a_failed_write_keeps_its_rows_for_the_next_and_leaves_no_temporary_file(tmp_path):
    """An unwritable destination (a file where the log's folder must go), then a writable one."""
    root, journal = tmp_path / "log", tmp_path / "journal"
    root.mkdir()
    (root / "fraud").write_text("in the way")
    log = InferenceLog(ParquetSink(str(root)), spool=LogSpool(journal), max_buffer_rows=5)
    record(log, "a", 2)
    record(log, "b", 2)

    assert log.flush() == []
    assert (log.counters.write_errors, log.counters.pending_rows, log.failing) == (1, 4, True)
    assert log.counters.dropped_rows == 0
    record(log, "c", 2)  # 4 kept + 2 > max_buffer_rows: dropped and counted
    record(log, "d", 1)
    assert (log.counters.dropped_rows, log.counters.pending_rows) == (2, 5)
    assert exported(log)["mlops_inference_log_pending_rows"] == 5
    assert len(list(journal.glob("*.journal"))) == 1  # the kept rows keep their journal file

    (root / "fraud").unlink()
    assert len(log.flush()) == 1  # one file: one model version, one day
    assert logged_ids(root) == ["a", "b", "d"] and not log.failing
    assert (log.counters.written_rows, log.counters.pending_rows) == (5, 0)
    assert list(journal.glob("*.journal")) == [] and not list(root.rglob(".*.tmp"))


def test_bodies_waiting_on_a_failing_store_are_capped_in_bytes(tmp_path):
    """However long storage is away, the log holds at most max_buffer_bytes of bodies."""
    root = tmp_path / "log"
    root.mkdir()
    (root / "fraud").write_text("in the way")
    size = len(orjson.dumps({"dataframe_records": [{"amount": 0.0}]}))  # one body of record()
    log = InferenceLog(ParquetSink(str(root)), max_buffer_bytes=2 * size + 1)
    for ident in ("a", "b", "c"):
        record(log, ident)
    assert (log.counters.pending_bytes, log.counters.dropped_rows) == (2 * size, 1)
    assert log.flush() == []  # storage away: both kept, still counted
    assert (log.counters.pending_rows, log.counters.pending_bytes) == (2, 2 * size)
    assert exported(log)["mlops_inference_log_pending_bytes"] == 2 * size
    (root / "fraud").unlink()
    assert len(log.flush()) == 1
    assert (log.counters.pending_rows, log.counters.pending_bytes) == (0, 0)
    assert logged_ids(root) == ["a", "b"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_FSIZE as a full disk")
def test_a_write_that_fills_the_disk_removes_its_temporary_file(tmp_path):
    """In a child whose files may not grow (as on a full disk), a Parquet write fails midway."""
    root = tmp_path / "log"
    script = textwrap.dedent(
        f"""
        import resource, numpy as np
        from types import SimpleNamespace
        from prefect_mlops.serving.inference_log import InferenceLog
        from prefect_mlops.serving.log_sinks import ParquetSink
        log = InferenceLog(ParquetSink({str(root)!r}))
        model = SimpleNamespace(name="fraud", version="4")
        for i in range(50):
            log.record(f"r{{i}}", model, b"x" * 4000, "text/csv", 1, {{"p": np.array([0.5])}})
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        print(log.flush(), log.counters.write_errors, log.counters.pending_rows)
        """
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "1", "50"]
    assert "File too large" in done.stderr  # the write did fail on the size limit
    assert [p.name for p in root.rglob("*") if p.is_file()] == []  # no .parquet.tmp left
