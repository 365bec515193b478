"""The model gate reuses test-split scores kept in the artifact store: the candidate's from
evaluation, the champion's from an earlier gate on the same dataset version; an entry that is
missing or damaged means scoring again, never a different answer. Real MLflow registry, real
models loaded through their child-process check, real Parquet splits."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.dataset import TARGET_COLUMN, read_split
from prefect_mlops.mlops.scores import load_scores, save_scores, scores_ref, scoring_libraries
from prefect_mlops.model_registry.loading import ModelStore
from prefect_mlops.model_registry.promotion import ChampionRef
from prefect_mlops.model_registry.registry import download_version, model_identity
from prefect_mlops.tasks.evaluation import EvaluationResult, compute_metrics
from prefect_mlops.tasks.model_gate_checks import run_model_checks, score_rows
from tests.fixtures import register_files

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"


@pytest.fixture
def gate(served_registry, tmp_path) -> Iterator[dict]:
    """The pipeline's champion as the candidate (its logged model, which evaluation scored),
    a copy of its files registered as another version to be the champion, and the gate's
    settings without the latency budget (a busy test machine would judge it, not the scores)."""
    uri = served_registry["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    store = ModelStore(client, uri)
    candidate = model_identity(client, f"models:/{MODEL}/{served_registry['version']}")
    files = download_version(client, MODEL, served_registry["version"], str(tmp_path), uri)
    copy = register_files(client, MODEL, files)
    settings = served_registry["config"].model_gate.model_copy(update={"max_latency_p95_ms": None})
    dataset = served_registry["dataset"]
    loaded = store.load(candidate)
    frame = read_split(dataset, "test")
    scores = score_rows(loaded, frame, dataset)
    targets = frame[TARGET_COLUMN].to_numpy(dtype="float64")
    yield {
        "store": store,
        "dataset": dataset,
        "settings": settings,
        "candidate": candidate,
        "champion": ChampionRef(version=copy, model_uri=f"models:/{MODEL}/{copy}"),
        "ref": scores_ref(dataset, "test", candidate, scoring_libraries(loaded)),
        "scores": scores,
        "metrics": compute_metrics(dataset.task, targets, scores, loaded.predictor.facts.threshold),
        "threshold": loaded.predictor.facts.threshold,
        "targets": targets,
    }
    save_scores(scores_ref(dataset, "test", candidate, scoring_libraries(loaded)), scores)
    client.delete_model_version(MODEL, copy)


def gate_run(gate: dict, champion: ChampionRef | None = None, evaluation=None):
    return run_model_checks(
        gate["dataset"], gate["candidate"], champion, gate["settings"], gate["store"], evaluation
    )


def test_the_gate_reads_the_scores_evaluation_kept(gate):
    kept = load_scores(gate["ref"])
    assert kept is not None, "evaluation kept no scores of the candidate"
    np.testing.assert_array_equal(kept, gate["scores"])
    assert gate_run(gate).candidate_metrics == gate["metrics"]  # as if scored from scratch

    planted = 1 - gate["scores"]  # a well-formed entry with other scores: the gate uses it
    save_scores(gate["ref"], planted)
    expected = compute_metrics("binary", gate["targets"], planted, gate["threshold"])
    assert gate_run(gate).candidate_metrics == expected


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "folder gone"])
def test_a_missing_or_damaged_entry_means_scoring_again(gate, damage):
    path = Path(gate["ref"].uri)
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * path.stat().st_size)
    else:
        shutil.rmtree(path.parent.parent)

    comparison = gate_run(gate)

    assert comparison.candidate_metrics == gate["metrics"]
    np.testing.assert_array_equal(load_scores(gate["ref"]), gate["scores"])  # kept again
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_a_second_gate_on_the_same_dataset_version_reuses_the_champions_scores(gate):
    champion = gate["champion"]
    first = gate_run(gate, champion)
    identity = model_identity(gate["store"].client, champion.model_uri)
    assert identity != gate["candidate"]  # its own entry, not the candidate's
    entry = Path(scores_ref(gate["dataset"], "test", identity, gate["ref"].scorer).uri)
    written = entry.stat()

    second = gate_run(gate, champion)

    assert entry.stat().st_ino == written.st_ino  # not scored (and so not written) again
    assert entry.stat().st_mtime_ns == written.st_mtime_ns
    assert second == first
    assert first.champion_metrics == gate["metrics"]  # the same files: the same scores
    assert [c.verdict for c in first.checks if c.name.startswith("slice.")] != []


def test_the_candidates_metrics_are_evaluations_when_from_the_scores_read(gate):
    def evaluation(scores) -> EvaluationResult:
        said = {"roc_auc": 0.5, "log_loss": 1.0, "best_possible_f1": 0.1}  # not computed here
        return EvaluationResult(
            run_id="r", split="test", rows=1, metrics=said, primary_metric="roc_auc", scores=scores
        )

    assert gate_run(gate, evaluation=evaluation(gate["ref"])).candidate_metrics == {
        "roc_auc": 0.5,
        "log_loss": 1.0,
    }
    other = gate["ref"].model_copy(update={"dataset_version": "another"})
    assert gate_run(gate, evaluation=evaluation(other)).candidate_metrics == gate["metrics"]
    assert gate_run(gate, evaluation=evaluation(None)).candidate_metrics == gate["metrics"]
