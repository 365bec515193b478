"""Batch scoring (`mlops score`, the batch-score flow) with the session's served fraud model.

Predictions must equal the registered pyfunc's, carry the version and the request ids the
inference log holds, reach the drift monitor's reader, and a bad file must write nothing.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from prefect_mlops.cli.root import app
from prefect_mlops.flows.score import batch_score_flow
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.mlops.storage import artifact_store
from prefect_mlops.serving.batch import BatchScoreRequest
from prefect_mlops.serving.log_reader import load_inference_window, load_parquet_window
from tests.integration.conftest import bundled_config

MODEL = "fraud-detector"
EPOCH = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
runner = CliRunner()


def with_ids(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(transaction_id=[f"t{i:04d}" for i in range(len(rows))])


def read_output(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def assert_pyfunc_predictions(output: pd.DataFrame, expected: pd.DataFrame) -> None:
    assert output["prediction"].astype(str).tolist() == expected["prediction"].astype(str).tolist()
    np.testing.assert_allclose(output["probability"], expected["probability"], rtol=1e-6)


def test_mlops_score_a_csv_writes_the_pyfunc_predictions_and_logs_them(served_registry, store):
    rows, expected = served_registry["rows"], served_registry["expected"]
    source, out = store.parent / "rows.csv", store.parent / "scored"
    with_ids(rows).to_csv(source, index=False)

    args = ["score", MODEL, "--data", str(source), "--out", str(out), "--keep", "transaction_id"]
    result = runner.invoke(app, [*args, "--chunk-rows", "128"])

    assert result.exit_code == 0, result.output
    output = read_output(out)
    assert_pyfunc_predictions(output, expected)
    assert output["transaction_id"].tolist() == with_ids(rows)["transaction_id"].tolist()
    assert set(output["version"]) == {served_registry["version"]} and set(output["model"]) == {
        MODEL
    }
    ids = output["request_id"].unique().tolist()
    assert len(ids) == 3 and [i.rsplit("-", 1)[1] for i in ids] == ["000000", "000001", "000002"]
    assert output.groupby("request_id")["row"].apply(list).tolist() == [
        list(range(128)),
        list(range(128)),
        list(range(300 - 256)),
    ]
    assert not [p.name for p in store.parent.iterdir() if p.name.startswith(".")]  # no leftovers

    logged, skipped = load_parquet_window(artifact_store().inference_log_root, MODEL, EPOCH)
    assert skipped == [] and len(logged) == 300
    joined = output.merge(logged, on=["request_id", "row"], suffixes=("", "_log"))
    assert len(joined) == 300 and (joined["version_log"] == joined["version"]).all()
    np.testing.assert_allclose(joined["output.probability"], joined["probability"])
    np.testing.assert_allclose(joined["input.amount"], rows["amount"])
    config = bundled_config("fraud_detection", store.parent / "unused.parquet")
    window = load_inference_window(get_settings(), MODEL, config.monitoring)
    assert len(window.rows) == 300 and set(window.rows["request_id"]) == set(ids)


def test_mlops_score_a_parquet_folder_into_the_artifact_store(served_registry, store):
    rows, expected = served_registry["rows"], served_registry["expected"]
    folder = store.parent / "batch"
    folder.mkdir()
    for number, start in enumerate(range(0, 300, 100)):
        part = pa.Table.from_pandas(rows.iloc[start : start + 100], preserve_index=False)
        pq.write_table(part, folder / f"rows-{number}.parquet", row_group_size=30)
    (folder / "_SUCCESS").write_text("")  # markers and hidden folders are not data
    (folder / ".partial").mkdir()
    rows.head(3).to_parquet(folder / ".partial" / "rows-9.parquet")

    result = runner.invoke(app, ["score", MODEL, "--data", str(folder), "--chunk-rows", "64"])

    assert result.exit_code == 0, result.output
    version = served_registry["version"]
    (batch,) = (store / "predictions" / MODEL / version).iterdir()
    assert [p.name for p in sorted(batch.iterdir())] == [f"part-0000{i}.parquet" for i in range(3)]
    output = read_output(batch)
    assert_pyfunc_predictions(output, expected)
    assert output["request_id"].str.startswith(batch.name).all()
    assert f"predictions   : {batch}" in result.output
    logged, _ = load_parquet_window(artifact_store().inference_log_root, MODEL, EPOCH)
    assert len(logged) == 300 and set(logged["request_id"]) == set(output["request_id"])


def test_batch_traffic_reaches_the_sql_inference_log(served_registry, store, monkeypatch):
    url = f"sqlite:///{store.parent / 'log.db'}"
    monkeypatch.setenv("MLOPS_INFERENCE_LOG", "sql")
    monkeypatch.setenv("MLOPS_INFERENCE_LOG_URL", url)
    get_settings.cache_clear()
    source = store.parent / "rows.parquet"
    served_registry["rows"].to_parquet(source)

    result = runner.invoke(app, ["score", MODEL, "--data", str(source), "--chunk-rows", "100"])

    assert result.exit_code == 0, result.output
    assert "log.db#inference_log" in result.output
    config = bundled_config("fraud_detection", source)
    window = load_inference_window(get_settings(), MODEL, config.monitoring)
    assert len(window.rows) == 300 and window.rows["request_id"].nunique() == 3
    np.testing.assert_allclose(
        window.rows["output.probability"], served_registry["expected"]["probability"], rtol=1e-6
    )
    assert not list((store / "inference-log").rglob("*.parquet"))  # staged files were published


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda r: r.drop(columns="amount"), "missing column(s) ['amount']"),
        (lambda r: r.assign(extra=1), "unexpected column(s) ['extra']"),
        (lambda r: r.assign(amount=r["amount"].astype(str).where(r.index != 40, "lots")), "row 40"),
    ],
    ids=["missing", "unexpected", "unreadable-value"],
)
def test_a_bad_file_exits_non_zero_naming_it_and_writes_nothing(
    served_registry, store, bad, message
):
    rows = served_registry["rows"]
    folder, out = store.parent / "batch", store.parent / "scored"
    folder.mkdir()
    rows.iloc[:100].to_parquet(folder / "a-good.parquet")
    bad(rows.iloc[100:].reset_index(drop=True)).to_parquet(folder / "b-bad.parquet")

    args = ["score", MODEL, "--data", str(folder), "--out", str(out), "--chunk-rows", "32"]
    result = runner.invoke(app, args)

    assert result.exit_code == 2, result.output
    assert str(folder / "b-bad.parquet") in result.output and message in result.output
    assert "Nothing was written" in result.output
    assert not out.exists()
    assert not [p.name for p in store.parent.iterdir() if p.name.startswith(".")]
    assert not (store / "predictions").exists()
    log_root = Path(artifact_store().inference_log_root)
    assert not log_root.exists() or not list(log_root.rglob("*.parquet"))


def test_scoring_refuses_an_existing_output_and_an_unknown_version(served_registry, store):
    source = store.parent / "rows.csv"
    served_registry["rows"].to_csv(source, index=False)
    taken = store.parent / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")

    exists = runner.invoke(app, ["score", MODEL, "--data", str(source), "--out", str(taken)])
    missing = runner.invoke(app, ["score", MODEL, "--data", str(source), "--version", "999"])

    assert exists.exit_code == 2 and "already exists" in exists.output
    assert (taken / "keep.txt").read_text() == "mine"
    assert missing.exit_code == 2 and "999" in missing.output


def test_the_batch_score_flow_runs_as_a_prefect_flow(served_registry, store):
    source = store.parent / "rows.parquet"
    served_registry["rows"].to_parquet(source)
    request = BatchScoreRequest(model=MODEL, data=str(source), version=served_registry["version"])

    state = batch_score_flow(request, return_state=True)

    assert state.is_completed(), state.message
    result = state.result()
    assert result.rows == 300 and result.version == served_registry["version"]
    assert_pyfunc_predictions(read_output(Path(result.output)), served_registry["expected"])


# ---------------------------------------------------------------- memory at 10M rows

TEN_MILLION = 10_000_000
PEAK_RSS_CEILING = 1_024 * 2**20
"""The scoring process tree's resident memory at most: measured 515 MiB (docs/batch-scoring.md),
about twice that allowed, and far under the 10M rows' in-memory size (several GiB)."""


def write_large_input(rows: pd.DataFrame, path: Path, total: int) -> None:
    """``total`` rows drawn from ``rows``, written a 500k-row row group at a time."""
    table = pa.Table.from_pandas(rows, preserve_index=False)
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(path, table.schema) as writer:
        for _ in range(0, total, 500_000):
            writer.write_table(table.take(rng.integers(0, len(rows), 500_000)))


def peak_tree_rss(process: subprocess.Popen) -> int:
    """The highest summed RSS of ``process`` and its children, sampled every 0.1 s until it exits."""
    peak, parent = 0, psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:  # a child ended between listing and reading
            pass
        time.sleep(0.1)
    return peak


@pytest.mark.slow
def test_ten_million_rows_score_in_bounded_memory(served_registry, store):
    source = store.parent / "ten-million.parquet"
    write_large_input(served_registry["rows"], source, TEN_MILLION)
    out = store.parent / "scored"
    env = os.environ | served_registry["env"] | {"MLOPS_ARTIFACT_STORE": str(store)}
    mlops = str(Path(sys.executable).parent / "mlops")

    started = time.perf_counter()
    process = subprocess.Popen(
        [mlops, "score", MODEL, "--data", str(source), "--out", str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peak = peak_tree_rss(process)
    output = process.stdout.read().decode()
    seconds = time.perf_counter() - started

    assert process.returncode == 0, output
    print(f"10M rows: peak RSS {peak / 2**20:.0f} MiB, {seconds:.0f} s")
    assert peak < PEAK_RSS_CEILING, f"peak RSS {peak / 2**20:.0f} MiB"
    assert pq.ParquetFile(out / "part-00000.parquet").metadata.num_rows == TEN_MILLION
    logged = sum(
        pq.ParquetFile(f).metadata.num_rows
        for f in Path(artifact_store().inference_log_root).rglob("*.parquet")
    )
    assert logged == TEN_MILLION // 100_000  # one logged request per chunk
