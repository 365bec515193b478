"""prefect.yaml: every deployment points at a real flow, on its own work pool."""

import importlib
import re
from pathlib import Path

import yaml
from prefect import Flow

PROJECT = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())


def test_every_entrypoint_is_a_prefect_flow():
    for deployment in PROJECT["deployments"]:
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert isinstance(getattr(module, name), Flow), deployment["entrypoint"]


def test_deployments_are_kebab_case_on_a_pool_per_kind_of_work():
    pools = {d["name"]: d["work_pool"]["name"] for d in PROJECT["deployments"]}
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", n) for n in pools)
    assert pools == {
        "preprocess": "etl-pool",
        "data-gate": "gate-pool",
        "train": "train-pool",
        "evaluate": "gate-pool",
        "model-gate": "gate-pool",
        "register": "deploy-pool",
        "retraining-pipeline": "orchestrator-pool",
    }
