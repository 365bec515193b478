"""prefect.yaml and its production profile: real flows, a pool per kind of work, settings set."""

import importlib
import re
from pathlib import Path

import yaml
from prefect import Flow
from prefect.client.schemas.schedules import CronSchedule

from prefect_mlops.flows.retrain import TRAIN_GPU_DEPLOYMENT
from prefect_mlops.infra.crash_detection import HEARTBEAT_SECONDS
from prefect_mlops.infra.deploy_check import placeholders
from prefect_mlops.mlops.config import load_config

ROOT = Path(__file__).resolve().parents[2]
LOCAL = yaml.safe_load((ROOT / "prefect.yaml").read_text())
PRODUCTION_TEXT = (ROOT / "prefect.production.yaml").read_text()
PRODUCTION = yaml.safe_load(PRODUCTION_TEXT)


def flow_of(deployment: dict) -> Flow:
    path, name = deployment["entrypoint"].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), name)


def test_every_entrypoint_is_a_prefect_flow_named_like_its_deployment():
    for deployment in LOCAL["deployments"] + PRODUCTION["deployments"]:
        flow = flow_of(deployment)
        assert isinstance(flow, Flow), deployment["entrypoint"]
        # The pipeline finds a stage's deployment as "<flow name>/<flow name>", and the train
        # stage's GPU deployment as "train/train-gpu" when the allocator picks a GPU.
        expected = "train" if deployment["name"] == TRAIN_GPU_DEPLOYMENT else deployment["name"]
        assert flow.name == expected


def test_deployments_are_kebab_case_on_a_pool_per_kind_of_work():
    pools = {d["name"]: d["work_pool"]["name"] for d in LOCAL["deployments"]}
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)*", n) for n in pools)
    assert pools == {
        "preprocess": "etl-pool",
        "data-gate": "gate-pool",
        "train": "train-pool",
        "evaluate": "gate-pool",
        "model-gate": "gate-pool",
        "register": "deploy-pool",
        "deploy": "deploy-pool",
        "drift-monitor": "monitor-pool",
        "retraining-pipeline": "orchestrator-pool",
    }


def test_every_run_sends_heartbeats_and_the_pipeline_runs_stages_as_deployments():
    for profile in (LOCAL, PRODUCTION):
        for deployment in profile["deployments"]:
            env = deployment["work_pool"]["job_variables"]["env"]
            assert env["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == str(HEARTBEAT_SECONDS)
            runner = env.get("MLOPS_STAGE_RUNNER")
            is_pipeline = deployment["name"] == "retraining-pipeline"
            assert runner == ("deployments" if is_pipeline else None), deployment["name"]


def test_the_pipeline_is_scheduled_and_its_default_config_exists():
    for profile in (LOCAL, PRODUCTION):
        (pipeline,) = [d for d in profile["deployments"] if d["name"] == "retraining-pipeline"]
        (schedule,) = pipeline["schedules"]
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises if invalid
        config = load_config(ROOT / pipeline["parameters"]["config"])
        assert config.model.name == "fraud-detector"


def test_drift_events_trigger_the_pipeline_and_the_monitor_runs_on_a_schedule():
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    from prefect_mlops.tasks.monitoring import DEGRADED_EVENT, DRIFT_EVENT

    for profile in (LOCAL, PRODUCTION):
        by_name = {d["name"]: d for d in profile["deployments"]}
        (trigger,) = by_name["retraining-pipeline"]["triggers"]
        parsed = DeploymentEventTrigger.model_validate(trigger)  # Prefect's own schema
        assert parsed.expect == {DRIFT_EVENT, DEGRADED_EVENT}
        assert parsed.match.model_dump() == {"prefect.resource.id": "mlops.model.*"}
        assert parsed.parameters == {"config": "{{ event.payload.config }}"}
        (schedule,) = by_name["drift-monitor"]["schedules"]
        assert schedule["interval"] == 1800
        assert by_name["drift-monitor"]["parameters"] == {"config": "configs/fraud_detection.yaml"}


def test_the_production_profile_mirrors_the_local_one_in_images():
    local = {d["name"]: (d["entrypoint"], d["work_pool"]["name"]) for d in LOCAL["deployments"]}
    production = {
        d["name"]: (d["entrypoint"], d["work_pool"]["name"]) for d in PRODUCTION["deployments"]
    }
    gpu = production.pop(TRAIN_GPU_DEPLOYMENT)
    assert gpu == ("flows/train.py:train_flow", "train-gpu-pool")  # GPU pools exist in production
    assert production == local
    for deployment in PRODUCTION["deployments"]:
        variables = deployment["work_pool"]["job_variables"]
        assert re.fullmatch(
            r"\{\{ \$MLOPS_IMAGE_REPOSITORY \}\}/prefect-mlops-[a-z-]+:\{\{ \$MLOPS_IMAGE_TAG \}\}",
            variables["image"],
        )
        assert variables["namespace"] == "{{ $MLOPS_K8S_NAMESPACE }}"


def test_every_production_setting_is_documented_and_passed_by_ci():
    operations = (ROOT / "docs" / "operations.md").read_text()
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    deploy_env = workflow["jobs"]["deploy"]["env"]
    for name in placeholders(PRODUCTION_TEXT):
        assert f"`{name}`" in operations, name
        assert name in deploy_env, name
    assert {"PREFECT_API_URL", "PREFECT_API_KEY"} <= set(deploy_env)
