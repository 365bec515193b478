"""The Python API: importing it is light, and it takes what its command takes."""

import inspect
import subprocess
import sys

import prefect_mlops
from prefect_mlops.cli.pipeline import recommend as recommend_command
from prefect_mlops.cli.pipeline import run as run_command
from prefect_mlops.cli.scoring import score as score_command
from prefect_mlops.cli.serving import serve as serve_command

FORMATTING_ONLY = {"as_json"}
"""Command options that only choose how the result is printed."""


def test_importing_the_api_loads_no_heavy_library():
    code = (
        "import sys, prefect_mlops; "
        "print(sorted(m for m in ('prefect', 'mlflow', 'dask', 'pandas', 'lightgbm') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"


def test_each_function_takes_its_commands_arguments_in_the_same_order():
    for command, function in [
        (run_command, prefect_mlops.run_pipeline),
        (recommend_command, prefect_mlops.recommend),
        (serve_command, prefect_mlops.serve),
        (score_command, prefect_mlops.score),
    ]:
        options = [p for p in inspect.signature(command).parameters if p not in FORMATTING_ONLY]
        arguments = list(inspect.signature(function).parameters)
        assert arguments[: len(options)] == options, function.__name__
