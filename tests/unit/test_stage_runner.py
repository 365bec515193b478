"""How the pipeline reads a stage's outcome: typed results, the stage's own errors, crashes."""

import pytest
from prefect.states import Cancelled, Completed, Crashed, Failed

from prefect_mlops.flows.data_gate import data_gate_flow
from prefect_mlops.flows.model_gate import model_gate_flow
from prefect_mlops.flows.train import train_flow
from prefect_mlops.infra.stage_runner import StageFailed, as_declared, declared_output, stage_output
from prefect_mlops.mlops.errors import DataValidationError
from prefect_mlops.mlops.gates import DataGateResult
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.tasks.model_gate import GateDecision
from prefect_mlops.tasks.training import TrainingResult

VERSION = {"name": "m", "version": "3", "alias": "challenger", "run_id": "r", "model_uri": "u"}


def test_declared_output_is_the_flows_return_type_without_state():
    assert declared_output(train_flow) is TrainingResult
    assert declared_output(data_gate_flow) is DataGateResult
    assert declared_output(model_gate_flow) is GateDecision  # "GateDecision | State"


def test_a_result_read_back_as_plain_json_becomes_the_declared_model():
    version = as_declared(VERSION, RegisteredVersion)
    assert isinstance(version, RegisteredVersion) and version.version == "3"
    same = RegisteredVersion(**VERSION)
    assert as_declared(same, RegisteredVersion) == same
    assert as_declared(None, RegisteredVersion) is None


def test_a_completed_stage_gives_its_value():
    assert (
        stage_output(Completed(data=VERSION), "register", RegisteredVersion).alias == "challenger"
    )


def test_a_stage_that_failed_on_bad_input_raises_that_error():
    state = Failed(data=DataValidationError("Data gate failed for 'x.csv': 2 checks"))
    with pytest.raises(DataValidationError, match="Data gate failed for 'x.csv'"):
        stage_output(state, "data-gate")


def test_a_crashed_or_cancelled_stage_is_named_with_its_state():
    crashed = Crashed(message="No heartbeat for 90 s")
    with pytest.raises(StageFailed, match=r"Stage 'train' ended Crashed: .*No heartbeat for 90 s"):
        stage_output(crashed, "train")
    with pytest.raises(StageFailed, match=r"Stage 'preprocess' ended Cancelled"):
        stage_output(Cancelled(message="no worker"), "preprocess")


def test_a_stage_that_failed_with_a_bug_is_reported_with_the_error():
    state = Failed(data=KeyError("feature_x"))
    with pytest.raises(StageFailed, match=r"Stage 'evaluate' ended Failed: KeyError: 'feature_x'"):
        stage_output(state, "evaluate")
