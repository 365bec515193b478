"""The `mlops` command line: every group's commands on one root app, listed as they always were;
exit statuses, help, --version and shell completion of the installed console script."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from subprocess import CompletedProcess

import typer
import typer.main
from typer.core import TyperGroup
from typer.testing import CliRunner

from prefect_mlops.cli.root import HELP_ORDER, app
from prefect_mlops.mlops.errors import ExitCode

runner = CliRunner()


def test_every_command_is_registered_and_listed_in_help_order():
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    assert group.list_commands(typer.Context(group)) == list(HELP_ORDER)
    allocator = group.get_command(typer.Context(group), "allocator")
    assert isinstance(allocator, TyperGroup)
    assert allocator.list_commands(typer.Context(allocator)) == ["history", "export", "import"]


# ---------------------------------------------------------------- the real console script

PROJECT = Path(__file__).resolve().parents[2]
MLOPS = str(Path(sys.executable).parent / "mlops")


def mlops(*args: str, cwd: Path = PROJECT) -> CompletedProcess:
    """The installed `mlops` console script, as a user runs it."""
    return subprocess.run([MLOPS, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_exit_status_tells_usage_errors_from_bad_input_and_success(tmp_path):
    unknown_option = mlops("check-config", "--colour", "red")
    both = mlops("run", "--config", "configs/fraud_detection.yaml", "--data", "x.csv")
    wrong_type = mlops("generate", "fraud", "--rows", "many", "--out", str(tmp_path / "x.csv"))
    missing = mlops("check-config", str(tmp_path / "absent.yaml"))
    bad_config = tmp_path / "bad.yaml"
    bad_config.write_text("name: demo\ndata: {source: x.csv}\nmodel: {name: m}\n")
    invalid = mlops("check-config", str(bad_config))
    (tmp_path / "rows.csv").write_text("x,y\n1,2\n3,4\n")
    bad_data = mlops("run", "--data", str(tmp_path / "rows.csv"), "--target", "label")
    fine = mlops("check-config", "configs/fraud_detection.yaml")

    for usage in (unknown_option, both, wrong_type):
        assert usage.returncode == ExitCode.USAGE == 64, usage.stdout + usage.stderr
        assert "Usage: mlops" in usage.stderr and "Traceback" not in usage.stderr
    assert "No such option: --colour" in unknown_option.stderr
    assert "not both" in both.stderr
    for refused in (missing, invalid, bad_data):
        assert refused.returncode == ExitCode.BAD_INPUT == 2, refused.stdout + refused.stderr
        assert "error: " in refused.stderr and "Traceback" not in refused.stderr
    assert "missing required key 'data.target'" in invalid.stderr
    assert "'label'" in bad_data.stderr and "Available columns" in bad_data.stderr
    assert fine.returncode == 0 and "configs/fraud_detection.yaml: OK" in fine.stdout


def test_check_config_of_a_missing_file_names_the_path_and_the_argument_given(tmp_path):
    absent = tmp_path / "missing.yaml"
    result = mlops("check-config", str(absent))
    assert result.returncode == 2
    message = result.stderr.split("error: ")[-1]
    assert f"Config file not found: {absent} (given as the CONFIG argument)" in message
    assert "--config" not in message
    with_option = mlops("run", "--config", str(absent))
    assert f"Config file not found: {absent} (given as --config)" in with_option.stderr


def test_version_names_the_package_and_the_key_components():
    result = mlops("--version")
    assert result.returncode == 0, result.stderr
    first, components = result.stdout.splitlines()
    assert first == f"mlops (prefect-mlops) {metadata.version('prefect-mlops')}"
    assert f"Python {platform.python_version()}" in components
    for name, distribution in (("Prefect", "prefect"), ("MLflow", "mlflow"), ("Dask", "dask")):
        assert f"{name} {metadata.version(distribution)}" in components
    assert f"LightGBM {metadata.version('lightgbm')}" in components
    assert "XGBoost 3." in components and "not installed" not in components


def test_help_shows_placeholders_and_every_command_lists_its_exit_statuses():
    wide = {"COLUMNS": "200"}
    run_help = runner.invoke(app, ["run", "--help"], env=wide)
    assert "Registered model name (default: <file>-model)." in run_help.output
    commands = [[name] for name in HELP_ORDER if name != "allocator"]
    commands += [["allocator", name] for name in ("history", "export", "import")]
    for command in [[], ["allocator"], *commands]:
        shown = runner.invoke(app, [*command, "--help"], env=wide)
        assert shown.exit_code == 0, (command, shown.output)
        assert "Exit status" in shown.output and "0: " in shown.output, command
        assert "64: usage error" in shown.output, command
    everything = runner.invoke(app, ["--help"], env=wide).output
    for code in ExitCode:
        assert f"{int(code)}: " in everything


def test_bash_completion_script_completes_commands_offline():
    # The variable names the shell; --show-completion detects it from the parent processes.
    script = subprocess.run(
        [MLOPS], env=os.environ | {"_MLOPS_COMPLETE": "source_bash"}, capture_output=True, text=True
    )
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _mlops_completion mlops" in script.stdout
    completed = subprocess.run(
        [
            "bash",
            "-c",
            'eval "$1"; COMP_WORDS=(mlops check-c); COMP_CWORD=1; _mlops_completion mlops; '
            'printf "%s\\n" "${COMPREPLY[@]}"',
            "-",
            script.stdout,
        ],
        env=os.environ | {"PATH": f"{Path(MLOPS).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.stdout.split() == ["check-config"], completed.stdout + completed.stderr


def test_a_bad_setting_and_excluding_options_get_their_exit_statuses(tmp_path):
    env = os.environ | {"MLOPS_SERVING_ACCESS_LOG_LEVEL": "loud"}
    bad_setting = subprocess.run(
        [MLOPS, "check-config", "configs/fraud_detection.yaml"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_setting.returncode == ExitCode.BAD_INPUT, bad_setting.stderr
    assert "MLOPS_SERVING_ACCESS_LOG_LEVEL" in bad_setting.stderr and "'loud'" in bad_setting.stderr
    assert "Traceback" not in bad_setting.stderr

    both = mlops("score", "m", "--data", str(tmp_path / "x.csv"), "--alias", "a", "--version", "2")
    assert both.returncode == ExitCode.USAGE, both.stderr
    assert "not both" in both.stderr
