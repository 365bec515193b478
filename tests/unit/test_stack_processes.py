"""The local stack's bookkeeping: pools from prefect.yaml, reuse rules, stopping process trees."""

import subprocess
import time
from pathlib import Path

import psutil
import pytest

from infra.crash_detection import SILENCE, crash_silent_runs_automation
from infra.stack import (
    ProcessRecord,
    StackError,
    StackOptions,
    StackState,
    _state_to_reuse,
    is_alive,
    project_pools,
    read_state,
    start_process,
    stop_process,
    write_state,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = StackOptions(ROOT, "127.0.0.1", 4200, 5000)


def test_pools_come_from_prefect_yaml_in_order_of_first_use():
    assert project_pools(ROOT) == [
        "etl-pool",
        "gate-pool",
        "train-pool",
        "deploy-pool",
        "monitor-pool",
        "orchestrator-pool",
    ]


def test_a_new_stack_takes_what_was_asked_and_defaults_for_the_rest(tmp_path):
    state = _state_to_reuse(tmp_path, StackOptions(prefect_port=4300), DEFAULTS)
    assert (state.host, state.prefect_port, state.mlflow_port) == ("127.0.0.1", 4300, 5000)
    assert state.prefect_api_url == "http://127.0.0.1:4300/api"
    assert (state.serving_url, state.serving_model) == ("http://127.0.0.1:5001", "fraud-detector")


def test_a_running_stack_is_reused_and_other_settings_are_refused(tmp_path):
    sleeper = start_process("worker:x", ["sleep", "60"], {}, tmp_path, tmp_path / "x.log", None)
    try:
        running = StackState(
            home=str(tmp_path),
            project_dir=str(ROOT),
            host="127.0.0.1",
            prefect_port=4311,
            mlflow_port=5011,
            processes={"worker:x": sleeper},
        )
        write_state(running)
        assert _state_to_reuse(tmp_path, StackOptions(), DEFAULTS) == read_state(tmp_path)
        with pytest.raises(
            StackError, match=r"already running .* prefect_port 4311 \(asked: 4200\)"
        ):
            _state_to_reuse(tmp_path, StackOptions(prefect_port=4200), DEFAULTS)
    finally:
        stop_process(sleeper)


def test_stopping_takes_the_whole_tree_even_children_in_their_own_session(tmp_path):
    script = "setsid sleep 300 & sleep 300 & wait"  # like a worker and its flow-run process
    record = start_process(
        "worker:y", ["bash", "-c", script], {}, tmp_path, tmp_path / "y.log", None
    )
    deadline = time.monotonic() + 10
    while len(psutil.Process(record.pid).children(recursive=True)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    tree = [psutil.Process(record.pid), *psutil.Process(record.pid).children(recursive=True)]
    assert len({p.pid for p in tree}) == 3

    assert stop_process(record, grace_seconds=5) == 3

    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in tree)
    assert not is_alive(record)
    assert stop_process(record) == 0  # already gone: nothing to do


def test_a_reused_pid_is_not_mistaken_for_ours(tmp_path):
    other = subprocess.Popen(["sleep", "30"])
    try:
        stale = ProcessRecord(
            name="worker:z", pid=other.pid, create_time=0.0, command=["x"], log="x"
        )
        assert not is_alive(stale)
        assert stop_process(stale) == 0 and other.poll() is None  # left alone
    finally:
        other.kill()
        other.wait()


def test_crash_detection_waits_for_three_missed_heartbeats_and_spares_finished_runs():
    automation = crash_silent_runs_automation()
    trigger = automation.trigger
    assert trigger.posture == "Proactive" and trigger.within == SILENCE
    assert SILENCE.total_seconds() == 90
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    for final in ["Completed", "Failed", "Cancelled", "Crashed", "Rejected", "TimedOut"]:
        assert f"prefect.flow-run.{final}" in trigger.expect
    (action,) = automation.actions
    assert action.state == "CRASHED"
