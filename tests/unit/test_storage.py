"""The artifact store: its options reach fsspec, a bad options variable is named, and the
pipeline writes where the layout says."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from prefect_mlops.mlops.config import parse_config
from prefect_mlops.mlops.dataset import load_dataset_ref, read_sample, read_split, save_dataset_ref
from prefect_mlops.mlops.errors import StorageError
from prefect_mlops.mlops.feedback import load_feedback, write_feedback
from prefect_mlops.mlops.settings import Settings, get_settings
from prefect_mlops.mlops.source import fingerprint_source
from prefect_mlops.mlops.storage import (
    DATASETS,
    FEEDBACK,
    INFERENCE_LOG,
    MONITORING,
    TRAINING,
    ArtifactStore,
    artifact_store,
    check_artifact_store,
    open_url,
    store_options,
    write_text,
)
from prefect_mlops.serving.inference_log import build_inference_log
from prefect_mlops.tasks.data_gate import load_or_derive_suite
from prefect_mlops.tasks.monitoring import last_event, remember_event
from prefect_mlops.tasks.preprocessing import build_dataset_version

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = "MLOPS_ARTIFACT_STORE_OPTIONS"


@pytest.fixture
def store_env(monkeypatch):
    """Set the artifact store (and its options) for this test; settings re-read."""

    def use(root: str, options: str | None = None) -> Settings:
        monkeypatch.setenv("MLOPS_ARTIFACT_STORE", root)
        if options is None:
            monkeypatch.delenv(OPTIONS, raising=False)
        else:
            monkeypatch.setenv(OPTIONS, options)
        get_settings.cache_clear()
        return get_settings()

    yield use
    get_settings.cache_clear()


# ---------------------------------------------------------------- options reach fsspec


def test_store_options_reach_the_file_system_of_urls_on_the_store(store_env):
    root = f"memory://store-{uuid.uuid4().hex[:8]}"
    store_env(root, '{"marker": "store-options", "retries": 3}')
    fs, path = open_url(f"{root}/datasets/x")
    assert fs.storage_options == {"marker": "store-options", "retries": 3}
    assert path.endswith("/datasets/x")
    # a URL on another file system (a local source) gets none of them
    local, _ = open_url("/tmp/elsewhere")
    assert "marker" not in local.storage_options
    assert store_options("/tmp/elsewhere") == {}
    # options given explicitly (a source's data.storage_options) win
    explicit, _ = open_url(f"{root}/x", {"marker": "source"})
    assert explicit.storage_options == {"marker": "source"}


def test_local_store_options_change_what_fsspec_does(store_env, tmp_path):
    """``auto_mkdir`` lets a dataset reference be written into a folder that does not exist."""
    dataset = SimpleNamespace(
        uri=f"file://{tmp_path}/store/datasets/x/1",
        model_dump_json=lambda indent: '{"name": "x"}',
    )
    sample = pd.DataFrame({"a": [1, 2]})
    store_env(f"file://{tmp_path}/store", None)
    with pytest.raises(FileNotFoundError):
        save_dataset_ref(dataset, sample)
    store_env(f"file://{tmp_path}/store", '{"auto_mkdir": true}')
    save_dataset_ref(dataset, sample)
    assert (tmp_path / "store/datasets/x/1/dataset.json").read_text() == '{"name": "x"}'
    assert read_sample(SimpleNamespace(sample_uri=f"{dataset.uri}/sample.parquet")).equals(sample)


def test_the_writability_check_and_the_inference_log_use_the_store_options(store_env):
    root = f"memory://store-{uuid.uuid4().hex[:8]}"
    settings = store_env(root, '{"marker": "log"}')
    check_artifact_store(settings)  # memory:// takes writes
    log = build_inference_log(settings)
    assert log is not None and log.sink.options == {"marker": "log"}
    model = SimpleNamespace(name="fraud", version="3")
    log.record("r-1", model, b'{"columns": ["a"], "data": [[1]]}', "application/json", 1, {})
    log.spool = None
    (written,) = log.flush()
    assert written.startswith(f"{artifact_store(settings).inference_log_root}/fraud/date=")
    fs, path = open_url(written)
    assert fs.storage_options == {"marker": "log"} and fs.exists(path)


def test_an_unwritable_store_names_the_variable(store_env, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = store_env(str(blocker / "store"), "{}")
    with pytest.raises(StorageError, match=r"The artifact store \(MLOPS_ARTIFACT_STORE\)"):
        check_artifact_store(settings)


# ---------------------------------------------------------------- a bad options variable


@pytest.mark.parametrize(
    ("value", "says"),
    [("{not json", "is not valid JSON"), ('["a"]', "must be a JSON object"), ("3", "not int")],
)
def test_a_bad_options_variable_is_named(monkeypatch, value, says):
    monkeypatch.setenv(OPTIONS, value)
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert OPTIONS in str(raised.value) and says in str(raised.value)


def test_options_default_to_none_and_parse_as_a_json_object(monkeypatch):
    monkeypatch.delenv(OPTIONS, raising=False)
    assert Settings().artifact_store_options == {}
    monkeypatch.setenv(OPTIONS, '{"anon": false, "client_kwargs": {"region_name": "eu"}}')
    assert Settings().artifact_store_options == {
        "anon": False,
        "client_kwargs": {"region_name": "eu"},
    }


# ---------------------------------------------------------------- the layout


def test_the_layout_puts_each_kind_under_its_own_folder():
    store = ArtifactStore("s3://bucket/artifacts/")
    assert store.dataset_uri("fraud", "abc") == "s3://bucket/artifacts/datasets/fraud/abc"
    assert store.inference_log_root == "s3://bucket/artifacts/inference-log"
    assert store.feedback_folder("m") == "s3://bucket/artifacts/feedback/m"
    assert store.last_event_uri("m") == "s3://bucket/artifacts/monitoring/m/last-event.json"
    assert store.training_scratch("r1") == "s3://bucket/artifacts/training/r1"
    assert store.training_scratch() != store.training_scratch()  # a fresh folder per run
    assert len({DATASETS, INFERENCE_LOG, FEEDBACK, MONITORING, TRAINING}) == 5


def test_no_module_spells_a_folder_of_the_store_but_the_storage_module():
    folders = "datasets|inference-log|feedback|monitoring|training|expectations|data-gate"
    joined = re.compile(rf"\}}/({folders})\b")
    found = []
    for package in ("cli", "flows", "tasks", "serving", "model_registry", "infra", "mlops"):
        for path in (ROOT / package).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if joined.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


def fraud_config(source: Path) -> object:
    rows = 80
    rng = np.random.default_rng(0)
    pd.DataFrame(
        {
            "id": [f"t{i}" for i in range(rows)],
            "amount": rng.normal(50, 10, rows),
            "kind": rng.choice(["a", "b"], rows),
            "y": [0, 1] * (rows // 2),
        }
    ).to_csv(source, index=False)
    raw = {
        "name": "tiny",
        "data": {"source": str(source), "target": "y", "id_column": "id"},
        "model": {"name": "tiny-model"},
    }
    return parse_config(raw)


def test_a_dataset_version_is_written_where_the_layout_says(store_env, tmp_path):
    settings = store_env(str(tmp_path / "store"))
    config = fraud_config(tmp_path / "tiny.csv")
    dataset = build_dataset_version(
        config, settings.resolved_artifact_store, fingerprint_source(config.data)
    )
    assert dataset.uri == artifact_store(settings).dataset_uri("tiny", dataset.version)
    assert load_dataset_ref(dataset.uri) == dataset
    assert sum(len(read_split(dataset, s)) for s in dataset.split_uris) == 80


def test_events_and_feedback_go_where_the_layout_says(store_env, tmp_path):
    settings = store_env(str(tmp_path / "store"))
    store = artifact_store(settings)
    when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    remember_event(settings, "m", "mlops.model.drift-detected", when)
    assert Path(store.last_event_uri("m")).exists()
    assert last_event(settings, "m")["emitted_at"] == when.isoformat()
    labels = pd.DataFrame({"request_id": ["r1"], "row": [0], "label": ["1"]})
    written = write_feedback(store.feedback_folder("m"), labels)
    assert written.startswith(f"{tmp_path}/store/feedback/m/")
    read, skipped = load_feedback(store.feedback_folder("m"))
    assert read.to_dict("records") == [{"request_id": "r1", "row": 0, "label": "1"}] and not skipped


@pytest.mark.parametrize("root", ["local", "memory://stores/write-text"])
def test_write_text_creates_the_folders_it_writes_into(tmp_path, root):
    base = str(tmp_path) if root == "local" else f"{root}-{uuid.uuid4().hex}"
    url = f"{base}/a/b/report.md"
    write_text(url, "# report\n")
    fs, path = open_url(url)
    assert fs.cat_file(path).decode() == "# report\n"


def test_the_data_gate_stores_a_derived_suite_beside_a_fresh_dataset_version(store_env, tmp_path):
    """The first derivation writes into ``expectations/``, a folder that does not exist yet."""
    settings = store_env(str(tmp_path / "store"))
    config = fraud_config(tmp_path / "tiny.csv")
    dataset = build_dataset_version(
        config, settings.resolved_artifact_store, fingerprint_source(config.data)
    )
    suite, uri = load_or_derive_suite(dataset, config.data_gate, config.data)
    assert uri.startswith(f"{dataset.uri}/expectations/")
    assert Path(uri).is_file() and Path(uri.removesuffix(".json") + ".profile.json").is_file()
    assert load_or_derive_suite(dataset, config.data_gate, config.data) == (suite, uri)
