"""The `mlops` command: bring-your-own-file runs and bad input, against real components."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from prefect_mlops.cli.root import app
from prefect_mlops.mlops.settings import get_settings
from tests.fixtures import read_only_folder

pytestmark = pytest.mark.slow
runner = CliRunner()
MLOPS = str(Path(sys.executable).parent / "mlops")


def mlops(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real console script against this session's Prefect API and this test's state."""
    from prefect.settings import PREFECT_API_URL

    env = os.environ | {"PREFECT_API_URL": PREFECT_API_URL.value()}
    return subprocess.run(
        [MLOPS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def registered_models() -> list[str]:
    uri = get_settings().resolved_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    return [m.name for m in client.search_registered_models()]


def house_prices(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    area = rng.uniform(30, 250, n)
    city = rng.choice(["lyon", "paris", "nantes", "lille"], n)
    built = pd.to_datetime("1950-01-01") + pd.to_timedelta(rng.integers(0, 25_000, n), unit="D")
    premium = (
        pd.Series(city).map({"paris": 3000, "lyon": 1500, "nantes": 800, "lille": 600}).to_numpy()
    )
    price = area * (2000 + premium) + rng.normal(0, 20_000, n)
    frame = pd.DataFrame(
        {
            "area_m2": area.round(1),
            "city": city,
            "built": built.strftime("%Y-%m-%d"),
            "rooms": np.maximum(1, (area // 25).astype(int)),
            "price": price.round(0),
        }
    )
    frame.loc[rng.random(n) < 0.05, "rooms"] = np.nan
    return frame


def test_bring_your_own_csv_infers_schema_and_task(tmp_path):
    path = tmp_path / "house-prices.csv"
    house_prices(4000).to_csv(path, index=False)
    result = mlops("run", "--data", str(path), "--target", "price")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "house-prices-model version 1 (alias 'champion')" in result.stdout
    assert registered_models() == ["house-prices-model"]
    uri = get_settings().resolved_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("house-prices-model", "champion")
    assert version.tags["task"] == "regression"
    r2 = float(version.tags["test_r2"])
    assert 0.8 < r2 <= 1.0  # price is mostly area x city premium


def write_config(tmp_path: Path, source: Path, **data) -> Path:
    config = {
        "name": "bad-input",
        "data": {"source": str(source), "target": "label", **data},
        "model": {"name": "bad-input-model"},
        "training": {"n_estimators": 20},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def small_frame(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    x = rng.normal(size=n)
    return pd.DataFrame({"x": x, "color": rng.choice(["a", "b"], n), "label": (x > 0).astype(int)})


def run_config(path: Path) -> subprocess.CompletedProcess:
    return mlops("run", "--config", str(path))


def assert_refused(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    message = result.stderr.split("error: ")[-1]  # the closing one-paragraph error
    for fragment in fragments:
        assert fragment in message, message
    assert "Traceback" not in message
    assert registered_models() == []  # nothing reached the registry


def test_missing_file(tmp_path):
    assert_refused(
        run_config(write_config(tmp_path, tmp_path / "absent.csv")),
        "Data source not found",
        "absent.csv",
    )


def test_corrupt_parquet_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + os.urandom(2000))
    assert_refused(run_config(write_config(tmp_path, path)), "Could not read", "broken.parquet")


def test_truncated_parquet_file(tmp_path):
    good = tmp_path / "good.parquet"
    small_frame().to_parquet(good)
    path = tmp_path / "truncated.parquet"
    path.write_bytes(good.read_bytes()[:-300])
    assert_refused(run_config(write_config(tmp_path, path)), "truncated.parquet")


def test_missing_target_column(tmp_path):
    path = tmp_path / "data.csv"
    small_frame().drop(columns=["label"]).to_csv(path, index=False)
    assert_refused(
        run_config(write_config(tmp_path, path)), "['label']", "data.target", "Available columns"
    )


def test_single_class_target(tmp_path):
    path = tmp_path / "data.csv"
    small_frame().assign(label=1).to_csv(path, index=False)
    assert_refused(run_config(write_config(tmp_path, path)), "'label' has 1 distinct value")


def test_all_null_column(tmp_path):
    path = tmp_path / "data.csv"
    small_frame().assign(empty=None).to_csv(path, index=False)
    assert_refused(
        run_config(write_config(tmp_path, path)), "['empty']", "entirely null", "data.csv"
    )


def test_config_with_unknown_key(tmp_path):
    path = write_config(tmp_path, tmp_path / "x.csv", colour="red")
    assert_refused(run_config(path), "unknown key 'data.colour'", str(path))


def test_config_with_an_unknown_family_is_refused_before_anything_trains(tmp_path):
    path = write_config(tmp_path, tmp_path / "x.csv")
    raw = yaml.safe_load(path.read_text())
    raw["training"]["family"] = ["xgboost", "catboost"]
    path.write_text(yaml.safe_dump(raw))
    assert_refused(
        run_config(path), "training.family", "'catboost'", "lightgbm or xgboost", str(path)
    )
    data = tmp_path / "data.csv"
    small_frame().to_csv(data, index=False)
    flag = mlops("run", "--data", str(data), "--target", "label", "--family", "catboost")
    assert_refused(flag, "training.family", "'catboost'", "the command line")


def test_bring_your_own_file_trained_by_xgboost(tmp_path):
    path = tmp_path / "house-prices.csv"
    house_prices(3000).to_csv(path, index=False)
    result = mlops("run", "--data", str(path), "--target", "price", "--family", "xgboost")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "house-prices-model version 1 (alias 'champion')" in result.stdout
    uri = get_settings().resolved_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("house-prices-model", "champion")
    assert client.get_run(version.run_id).data.tags["mlops.family"] == "xgboost"
    assert 0.8 < float(version.tags["test_r2"]) <= 1.0


def test_config_with_wrong_type(tmp_path):
    path = tmp_path / "typed.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "data": {"source": "x.csv", "target": "y"},
                "model": {"name": "m"},
                "split": {"test_fraction": "lots"},
            }
        )
    )
    assert_refused(run_config(path), "split.test_fraction", "'lots'", str(path))


def test_an_unwritable_artifact_store_is_an_environment_failure_not_bad_input(tmp_path):
    path = tmp_path / "data.csv"
    small_frame().to_csv(path, index=False)
    with read_only_folder(tmp_path / "store") as store:
        env = os.environ | {"MLOPS_ARTIFACT_STORE": str(store)}
        result = subprocess.run(
            [MLOPS, "run", "--config", str(write_config(tmp_path, path))],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    message = result.stderr.split("error: ")[-1]
    assert f"The artifact store (MLOPS_ARTIFACT_STORE), {store}, cannot be written" in message
    assert "Nothing was run" in message and "writable folder" in message
    assert "Traceback" not in result.stderr
    assert registered_models() == []


def test_trigger_without_a_prefect_server_is_an_environment_failure(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    result = subprocess.run(
        [MLOPS, "trigger"],
        env=env | {"MLOPS_HOME": str(tmp_path / "no-stack")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "No Prefect server to trigger on: start the local stack with `mlops up`" in result.stderr


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("run", "generate", "ui", "check-config", "monitor", "simulate-traffic"):
        assert command in result.output
    run_help = runner.invoke(app, ["run", "--help"])
    assert "--data" in run_help.output and "--target" in run_help.output
    traffic_help = runner.invoke(app, ["simulate-traffic", "--help"])
    assert "--drift" in traffic_help.output and "--no-monitor" in traffic_help.output


def test_console_script_writes_only_under_dot_mlops(tmp_path):
    """The real `mlops` executable, as a new user runs it: own Prefect API, all state in .mlops/."""
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir(), home.mkdir()
    house_prices(1500, seed=3).to_csv(work / "prices.csv", index=False)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "MLOPS_"))
    }
    env |= {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
    }
    mlops = Path(sys.executable).parent / "mlops"

    bad = subprocess.run(
        [mlops, "run", "--data", "nope.csv", "--target", "price"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Data source not found: 'nope.csv'" in bad.stderr

    done = subprocess.run(
        [mlops, "run", "--data", "prices.csv", "--target", "price", "--name", "prices"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "prices version 1 (alias 'champion')" in done.stdout
    assert sorted(p.name for p in work.iterdir()) == [".mlops", "prices.csv"]
    assert list(home.iterdir()) == []
    state = {p.name for p in (work / ".mlops").iterdir()}
    assert {"mlflow.db", "prefect", "artifacts", "mlflow-artifacts"} <= state


def test_recommend_and_the_history_commands(tmp_path):
    import json

    house_prices(3000).to_csv(tmp_path / "houses.csv", index=False)
    shown = mlops("recommend", "--data", "houses.csv", "--target", "price", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    allocation = json.loads(shown.stdout)
    assert allocation["workers"] >= 1 and allocation["confidence_label"] == "low"
    assert any("No run history yet" in line for line in allocation["rationale"])
    assert any(line.startswith("GPU:") for line in allocation["rationale"])

    text = mlops("recommend", "--data", "houses.csv", "--target", "price", cwd=tmp_path)
    assert "## Alternatives" in text.stdout and "core-s" in text.stdout

    empty = mlops("allocator", "history", cwd=tmp_path)
    assert empty.returncode == 0 and "0 recorded run(s)" in empty.stdout

    bad = tmp_path / "bad.csv"
    bad.write_text("use_case,workers,status,wall_time_s\nabc,two,success,3.5\n")
    refused = mlops("allocator", "import", str(bad), cwd=tmp_path)
    assert refused.returncode == 2
    assert "bad.csv, row 1: field 'workers'" in refused.stderr
    assert "Nothing was imported" in refused.stderr
    exported = mlops("allocator", "export", str(tmp_path / "out.parquet"), cwd=tmp_path)
    assert exported.returncode == 0 and "Exported 0 run(s)" in exported.stdout
