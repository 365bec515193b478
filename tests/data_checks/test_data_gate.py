"""The data gate's verdicts, from real GX checkpoints on small frames (offline, seconds)."""

from pathlib import Path

import numpy as np
import pytest

from prefect_mlops.mlops.config import DataConfig, DataGateConfig
from prefect_mlops.mlops.errors import DataValidationError
from prefect_mlops.mlops.gates import DataGateResult
from prefect_mlops.tasks.data_gate import (
    data_gate_error,
    load_validation_frame,
    raise_if_data_gate_failed,
    run_data_gate,
    to_validation_frame,
)
from prefect_mlops.tasks.data_gate_checks import derive_suite, profile_reference
from prefect_mlops.tasks.gx_checkpoint import interpret_results, validate_frame
from tests.data_checks.conftest import make_dataset, split_rows

DATA = DataConfig(source="toy.csv", target="label", id_column="row_id")


@pytest.fixture(scope="module")
def suite():
    dataset = make_dataset()
    profile = profile_reference(
        to_validation_frame(split_rows(2000, seed=1), dataset), dataset, 100
    )
    return derive_suite(profile, DataGateConfig(), DATA) | {"name": "toy-ref"}


def run_gate(suite, rows, tmp_path: Path):
    frame = to_validation_frame(rows, make_dataset())
    validation = validate_frame(frame, suite, tmp_path)
    checks = interpret_results(validation.result, frame, suite, ["row_id", "label"])
    return validation, {c.name: c for c in checks}


def failed(checks):
    return sorted(name for name, c in checks.items() if c.verdict == "fail")


def test_data_like_the_reference_passes_and_renders_data_docs(suite, tmp_path):
    validation, checks = run_gate(suite, split_rows(1500, seed=2), tmp_path)
    assert validation.success and failed(checks) == []
    assert len(checks) == len(suite["expectations"])
    docs = Path(validation.data_docs_dir)
    assert (docs / "index.html").is_file()
    assert list(docs.glob("validations/**/*.html"))
    assert not list(docs.rglob("*.gif"))  # GX's tutorial animations are left out


def test_renamed_column_fails_the_column_set_and_skips_its_other_checks(suite, tmp_path):
    rows = split_rows(1500, seed=2).rename(columns={"amount": "amount_eur"})
    _, checks = run_gate(suite, rows, tmp_path)
    assert failed(checks) == ["table.columns"]
    assert "missing ['amount']" in checks["table.columns"].detail
    assert "unexpected ['amount_eur']" in checks["table.columns"].detail
    assert checks["column.amount.mean"].verdict == "skip"
    assert checks["column.amount.mean"].detail == "not evaluated: the column is missing"


def test_wrong_type_fails_the_type_check(suite, tmp_path):
    rows = split_rows(1500, seed=2)
    rows["amount"] = rows["amount"].round(1).astype(str).astype("string")
    _, checks = run_gate(suite, rows, tmp_path)
    assert failed(checks) == ["column.amount.type"]
    assert checks["column.amount.type"].value == "str"
    assert checks["column.amount.range"].verdict == "skip"


def test_out_of_range_values_name_the_offending_rows(suite, tmp_path):
    rows = split_rows(1500, seed=2)
    rows.loc[[3, 7, 11], "amount"] = -1e6
    rows.loc[rows.index[20:60], "amount"] = 1e6
    _, checks = run_gate(suite, rows, tmp_path)
    check = checks["column.amount.range"]
    assert check.verdict == "fail" and check.value == pytest.approx(43 / 1500)
    assert "43 of 1,500 rows offend" in check.detail
    assert "row 3 (row_id='r2-3', label=" in check.detail and "amount=-1000000.0" in check.detail


def test_null_burst_fails_the_null_share(suite, tmp_path):
    rows = split_rows(1500, seed=2)
    rows.loc[np.random.default_rng(0).random(1500) < 0.3, "city"] = None
    _, checks = run_gate(suite, rows, tmp_path)
    assert failed(checks) == ["column.city.nulls"]
    assert checks["column.city.nulls"].value == pytest.approx(0.3, abs=0.04)


def test_shifted_distribution_fails_the_moments(suite, tmp_path):
    rows = split_rows(1500, seed=2)
    rows["amount"] = rows["amount"] + 5.0  # half a standard deviation, still inside the range
    _, checks = run_gate(suite, rows, tmp_path)
    assert {"column.amount.mean", "column.amount.median"} <= set(failed(checks))
    assert checks["column.amount.range"].verdict == "pass"


def test_flipped_labels_fail_the_class_balance(suite, tmp_path):
    rows = split_rows(1500, seed=2)
    rows["__target__"] = 1.0 - rows["__target__"]  # 20% positives become 80%
    _, checks = run_gate(suite, rows, tmp_path)
    assert set(failed(checks)) == {"target.label.share.yes.max", "target.label.share.no.min"}
    assert checks["target.label.share.yes.max"].value == pytest.approx(0.8, abs=0.04)


def test_unseen_category_beyond_tolerance_fails(suite, tmp_path):
    rows = split_rows(1500, seed=2)
    rows.loc[rows.index[:100], "city"] = "lille"
    _, checks = run_gate(suite, rows, tmp_path)
    assert failed(checks) == ["column.city.categories"]
    assert "city='lille'" in checks["column.city.categories"].detail


def test_enforce_raises_with_every_failure_in_words(suite, tmp_path):
    rows = split_rows(1500, seed=2).rename(columns={"city": "town"})
    _, checks = run_gate(suite, rows, tmp_path)
    result = DataGateResult(
        passed=False,
        dataset_version="cand",
        reference_version="ref",
        reference_origin="the training data of champion version 1",
        suite_name="toy-ref",
        suite_uri="/x/suite.json",
        report_uri="/x/report.md",
        rows_validated=1500,
        rows_total=1500,
        checks=list(checks.values()),
    )
    with pytest.raises(DataValidationError) as error:
        raise_if_data_gate_failed(result, "toy.csv")
    message = str(error.value)
    assert message == data_gate_error(result, "toy.csv")
    assert "column set matches the reference" in message and "missing ['city']" in message
    assert "Nothing was trained or registered" in message and "/x/report.md" in message


def written_dataset(root: Path, rows: int):
    """A dataset version on disk: each split as two Parquet parts, like preprocessing writes."""
    frame = split_rows(rows, seed=4)
    splits = {"train": frame.iloc[: rows // 2], "validation": frame.iloc[rows // 2 : 3 * rows // 4]}
    splits["test"] = frame.iloc[3 * rows // 4 :]
    for split, part in splits.items():
        (root / split).mkdir(parents=True)
        half = len(part) // 2
        part.iloc[:half].to_parquet(root / split / "part-00000.parquet")
        part.iloc[half:].to_parquet(root / split / "part-00001.parquet")
    return make_dataset("big").model_copy(
        update={
            "uri": str(root),
            "split_uris": {s: str(root / s) for s in splits},
            "row_counts": {s: len(p) for s, p in splits.items()},
        }
    )


def test_a_large_dataset_is_validated_on_a_sample_and_counted_exactly(tmp_path):
    dataset = written_dataset(tmp_path / "big", 8000)
    gate = DataGateConfig(min_rows=7000)
    profile = profile_reference(
        load_validation_frame(dataset), dataset, 100, rows_total=sum(dataset.row_counts.values())
    )
    suite = derive_suite(profile, gate, DATA) | {"name": "big-suite"}

    first = run_data_gate(dataset, dataset, "itself", suite, "/x/suite.json", max_rows=1000)
    again = run_data_gate(dataset, dataset, "itself", suite, "/x/suite.json", max_rows=1000)

    assert first.passed, [c.summary() for c in first.failures]
    assert first.rows_total == 8000 and 900 <= first.rows_validated <= 1100
    assert again.rows_validated == first.rows_validated  # a seeded sample
    rows = next(c for c in first.checks if c.name == "table.row_count")
    assert (rows.value, rows.verdict) == (8000.0, "pass")  # not the sample's size
    assert "exact count" in rows.detail
    assert [c.name for c in first.checks] == [e["meta"]["check"] for e in suite["expectations"]]
    assert "a seeded uniform sample of 8,000" in Path(first.report_uri).read_text()

    too_few = derive_suite(profile, DataGateConfig(min_rows=9000), DATA) | {"name": "strict"}
    strict = run_data_gate(dataset, dataset, "itself", too_few, "/x/s.json", max_rows=1000)
    assert [c.name for c in strict.failures] == ["table.row_count"]


def test_a_small_dataset_is_validated_whole(tmp_path):
    dataset = written_dataset(tmp_path / "small", 2000)
    frame = load_validation_frame(dataset, max_rows=5000)
    assert len(frame) == 2000 and frame["row_id"].is_unique
