"""`mlops export`: a bundle installed into a clean virtual environment predicts as the registry,
for a model of each family."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefect_mlops.mlops.families import predictor_module

pytestmark = pytest.mark.slow
MLOPS = str(Path(sys.executable).parent / "mlops")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLOPS, *args], env=env, capture_output=True, text=True, timeout=300, check=False
    )


def as_json_rows(rows: pd.DataFrame) -> dict:
    """The rows as an MLflow ``dataframe_split`` request: ISO dates, nulls for missing values."""
    plain = rows.copy()
    for column in plain.select_dtypes(include=["datetime", "datetimetz"]).columns:
        plain[column] = plain[column].dt.strftime("%Y-%m-%dT%H:%M:%S")
    plain = plain.astype(object).where(plain.notna(), None)
    return {"dataframe_split": {"columns": list(plain.columns), "data": plain.to_numpy().tolist()}}


def test_an_exported_bundle_predicts_like_the_registry_without_mlflow(scoring_registry, tmp_path):
    env = os.environ | scoring_registry["env"]
    bundle = tmp_path / "bundle"
    exported = cli("export", "fraud-detector", "--out", str(bundle), env=env)
    assert exported.returncode == 0, exported.stderr
    version = scoring_registry["version"]
    assert f"Exported fraud-detector version {version} to {bundle}" in exported.stdout
    package = "fraud_detector_predictor"
    family = predictor_module(scoring_registry["family"])  # LightGBM's or XGBoost's files
    assert all((bundle / package / "model" / name).is_file() for name in family.MODEL_FILES)
    requirements = (bundle / "requirements.txt").read_text().split()
    names = [r.split("==")[0] for r in requirements]
    assert names == [*family.REQUIREMENTS, "numpy", "pandas", "pydantic"]
    assert all("==" in r for r in requirements)  # pinned to what the model was logged with

    venv = tmp_path / "clean-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(bundle)],  # as the README says
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    for absent in ("mlflow", "prefect", "mlops"):  # nothing of the stack came along
        probe = subprocess.run(
            [python, "-c", f"import {absent}"], capture_output=True, timeout=60, cwd=tmp_path
        )
        assert probe.returncode != 0, f"{absent} is importable in the clean environment"

    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(as_json_rows(scoring_registry["rows"])))
    predicted = subprocess.run(
        [python, "-m", package, str(rows_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,  # not the project: the installed package must stand alone
    )
    assert predicted.returncode == 0, predicted.stderr
    got = pd.DataFrame(json.loads(predicted.stdout)["predictions"])
    expected = scoring_registry["expected"]
    assert list(got.columns) == list(expected.columns)
    assert (got["prediction"].astype(str) == expected["prediction"].astype(str)).all()
    np.testing.assert_allclose(got["probability"], expected["probability"], rtol=1e-12)

    missing_column = subprocess.run(
        [python, "-m", package, "-"],
        input=json.dumps([{"amount": 1.0}]),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert missing_column.returncode == 2 and "lack column(s)" in missing_column.stderr


def test_export_refuses_a_used_folder_and_an_unknown_model(served_registry, tmp_path):
    env = os.environ | served_registry["env"]
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    refused = cli("export", "fraud-detector", "--out", str(used), env=env)
    assert refused.returncode == 2 and "already exists and is not an empty folder" in refused.stderr
    assert [p.name for p in used.iterdir()] == ["keep.txt"]  # nothing lost, nothing added

    unknown = cli("export", "nope@champion", "--out", str(tmp_path / "new"), env=env)
    assert unknown.returncode == 2 and "model 'nope' has no alias 'champion'" in unknown.stderr
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".new-")]  # no staging left
