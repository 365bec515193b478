"""Kept scores (mlops/scores.py): an entry is used only when it is whole and is the one asked
for; anything else reads as missing, so the caller scores again."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.dataset import read_split, read_split_head
from prefect_mlops.mlops.scores import load_scores, save_scores, scores_ref
from prefect_mlops.mlops.storage import SCORES


def dataset(folder: Path, rows: int = 50, version: str = "v1") -> SimpleNamespace:
    """What a scores entry needs of a dataset version: its folder, version and row counts."""
    return SimpleNamespace(
        uri=str(folder / version), version=version, row_counts={"test": rows, "validation": rows}
    )


def scores(rows: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(rows)


def test_scores_come_back_as_saved_from_the_dataset_versions_folder(tmp_path):
    ref = scores_ref(dataset(tmp_path), "test", "models:/m-abc", "lightgbm==4.6.0")
    assert ref.uri.startswith(f"{tmp_path}/v1/{SCORES}/test/") and ref.rows == 50
    assert load_scores(ref) is None  # nothing kept yet
    saved = scores()
    save_scores(ref, saved)
    np.testing.assert_array_equal(load_scores(ref), saved)
    assert [p.name for p in Path(ref.uri).parent.iterdir()] == [Path(ref.uri).name]  # no leftovers


def test_class_probabilities_of_a_multiclass_model_round_trip(tmp_path):
    ref = scores_ref(dataset(tmp_path), "test", "models:/m-abc", "lightgbm==4.6.0")
    saved = np.random.default_rng(1).dirichlet([1, 1, 1], size=50)
    save_scores(ref, saved)
    np.testing.assert_array_equal(load_scores(ref), saved)


def test_each_thing_that_determines_the_scores_has_its_own_entry(tmp_path):
    base = ("models:/m-abc", "lightgbm==4.6.0")
    refs = [
        scores_ref(dataset(tmp_path), "test", *base),
        scores_ref(dataset(tmp_path), "validation", *base),
        scores_ref(dataset(tmp_path, version="v2"), "test", *base),
        scores_ref(dataset(tmp_path), "test", "models:/m-other", base[1]),
        scores_ref(dataset(tmp_path), "test", base[0], "lightgbm==4.5.0"),
    ]
    assert len({r.uri for r in refs}) == len(refs)


@pytest.mark.parametrize(
    "damage",
    ["truncated", "one byte changed", "empty", "not a zip", "another model's entry", "fewer rows"],
)
def test_a_damaged_or_foreign_entry_reads_as_missing(tmp_path, damage):
    ref = scores_ref(dataset(tmp_path), "test", "models:/m-abc", "lightgbm==4.6.0")
    save_scores(ref, scores())
    path = Path(ref.uri)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "one byte changed":
        middle = len(data) // 2  # inside the scores
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not a zip":
        path.write_text("scores")
    elif damage == "another model's entry":
        other = scores_ref(dataset(tmp_path), "test", "models:/m-other", "lightgbm==4.6.0")
        save_scores(other, scores(seed=3))
        path.write_bytes(Path(other.uri).read_bytes())
    else:
        fewer = scores_ref(dataset(tmp_path, rows=49), "test", "models:/m-abc", "lightgbm==4.6.0")
        save_scores(fewer, scores(rows=49))  # the same file: a split that had 49 rows
    assert load_scores(ref) is None


def test_scores_for_other_rows_are_refused_before_anything_is_written(tmp_path):
    ref = scores_ref(dataset(tmp_path), "test", "models:/m-abc", "lightgbm==4.6.0")
    with pytest.raises(ValueError, match="49 scores for the 50 rows"):
        save_scores(ref, scores(rows=49))
    assert not Path(ref.uri).parent.exists() or not any(Path(ref.uri).parent.iterdir())


def test_the_head_of_a_split_is_its_first_rows_in_read_order(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for part in range(3):
        pd.DataFrame(
            {"a": rng.random(40), "b": rng.choice(["x", "y"], 40), "c": rng.random(40)}
        ).to_parquet(folder / f"part.{part}.parquet")
    split = SimpleNamespace(split_uris={"test": str(folder)})
    whole = read_split(split, "test", columns=["a", "b"]).reset_index(drop=True)
    for rows in (5, 40, 95, 200):
        head = read_split_head(split, "test", ["a", "b"], rows)
        pd.testing.assert_frame_equal(head.reset_index(drop=True), whole.head(rows))
