"""The local stack's bookkeeping: pools, reuse rules, ports, stopping and restarting processes."""

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from prefect.client.schemas.objects import DeploymentSchedule
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule

from prefect_mlops.infra.crash_detection import SILENCE, crash_silent_runs_automation
from prefect_mlops.infra.mlflow_server import mlflow_server_launch
from prefect_mlops.infra.schedules import describe_schedule, expects_runs
from prefect_mlops.infra.stack.prefect_file import project_pools
from prefect_mlops.infra.stack.processes import is_alive, reap_orphans, start_process, stop_process
from prefect_mlops.infra.stack.state import (
    RESTART_LIMIT,
    ProcessRecord,
    StackError,
    StackState,
    read_state,
    stack_lock,
    write_state,
)
from prefect_mlops.infra.stack.up import StackOptions, StartedHere, _state_to_reuse, check_ports
from prefect_mlops.infra.supervisor import due_for_restart, given_up, restart_delay
from prefect_mlops.mlops.errors import StorageError
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.mlops.storage import check_writable
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = StackOptions(ROOT, "127.0.0.1", 4200, 5000)


def test_pools_come_from_prefect_yaml_in_order_of_first_use():
    assert project_pools(ROOT) == [
        "etl-pool",
        "gate-pool",
        "train-pool",
        "deploy-pool",
        "monitor-pool",
        "score-pool",
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


# ---------------------------------------------------------------- ports and roll-back


def listening(port: int) -> socket.socket:
    """A socket that holds ``port`` on loopback, as another program would."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def state_on_free_ports(home: Path) -> StackState:
    return StackState(
        home=str(home),
        project_dir=str(ROOT),
        host="127.0.0.1",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        serving_port=free_port(),
    )


@pytest.mark.parametrize(
    ("field", "option"),
    [
        ("prefect_port", "--prefect-port or MLOPS_PREFECT_PORT"),
        ("mlflow_port", "--mlflow-port or MLOPS_MLFLOW_PORT"),
        ("serving_port", "--serving-port or MLOPS_SERVING_PORT"),
    ],
)
def test_every_port_is_checked_before_anything_starts(tmp_path, field, option):
    state = state_on_free_ports(tmp_path)
    check_ports(state)  # all free
    busy = getattr(state, field)
    with listening(busy), pytest.raises(StackError) as refused:
        check_ports(state)
    assert f"Port {busy} on 127.0.0.1 is in use by another program" in str(refused.value)
    assert option in str(refused.value) and "Nothing was started." in str(refused.value)


def test_two_servers_on_one_port_are_refused(tmp_path):
    state = state_on_free_ports(tmp_path).model_copy(
        update={"prefect_port": 4999, "mlflow_port": 4999}
    )
    with pytest.raises(
        StackError, match="need a port each.*prefect-server 4999, mlflow-server 4999"
    ):
        check_ports(state)


def sleeper(home: Path, name: str) -> ProcessRecord:
    return start_process(name, ["sleep", "300"], {}, home, home / f"{name}.log", None)


def test_a_failed_up_stops_what_it_started_and_keeps_what_ran_before(tmp_path):
    before = sleeper(tmp_path, "prefect-server")
    dead = ProcessRecord(name="worker:w", pid=before.pid, create_time=0.0, command=["x"], log="x")
    state = state_on_free_ports(tmp_path)
    state.processes = {"prefect-server": before, "worker:w": dead}
    write_state(state)
    started = StartedHere(state)
    mine = [sleeper(tmp_path, "mlflow-server"), sleeper(tmp_path, "worker:w")]
    try:
        for previous, record in zip([None, dead], mine, strict=True):
            state.processes[record.name] = record
            started.add(previous, record)

        started.roll_back(say=lambda line: None)

        assert not any(is_alive(record) for record in mine)
        assert is_alive(before)
        kept = read_state(tmp_path)
        assert kept.processes == {"prefect-server": before, "worker:w": dead}
    finally:
        stop_process(before)
        for record in mine:
            stop_process(record)


def test_roll_back_of_a_stack_it_started_alone_leaves_no_state(tmp_path):
    state = state_on_free_ports(tmp_path)
    started = StartedHere(state)
    record = sleeper(tmp_path, "prefect-server")
    state.processes[record.name] = record
    write_state(state)
    started.add(None, record)

    started.roll_back(say=lambda line: None)

    assert not is_alive(record) and read_state(tmp_path) is None


def test_the_children_a_killed_server_leaves_behind_are_reaped(tmp_path):
    script = "sleep 300 & wait"  # like `prefect server start` and its uvicorn
    record = start_process(
        "prefect-server", ["bash", "-c", script], {}, tmp_path, tmp_path / "s.log", None
    )
    deadline = time.monotonic() + 10
    while not psutil.Process(record.pid).children():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    (child,) = psutil.Process(record.pid).children()
    os.kill(record.pid, signal.SIGKILL)  # the server alone, as the OOM killer would
    psutil.Process(record.pid).wait(timeout=10)
    assert child.is_running() and os.getpgid(child.pid) == record.pid  # an orphan of its group

    reap_orphans(record)

    child.wait(timeout=10)
    assert not child.is_running()


def test_the_stack_lock_is_held_by_one_holder_at_a_time(tmp_path):
    with stack_lock(tmp_path, timeout=0) as first:
        assert first
        script = (
            "import sys; from pathlib import Path; from prefect_mlops.infra.stack.state import stack_lock\n"
            "with stack_lock(Path(sys.argv[1]), timeout=0) as held: print(held)"
        )
        other = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True
        )
        assert other.stdout.strip() == "False", other.stderr
    with stack_lock(tmp_path, timeout=0) as again:
        assert again


# ---------------------------------------------------------------- the supervisor's policy


def dead_record(name: str, restarted_at: list[float]) -> ProcessRecord:
    return ProcessRecord(
        name=name, pid=1, create_time=0.0, command=["x"], log="x", restarted_at=restarted_at
    )


def test_restarts_back_off_and_stop_after_the_limit_in_the_window():
    assert [restart_delay(n) for n in range(8)] == [0, 2, 4, 8, 16, 32, 60, 60]
    now = time.time()
    state = StackState(home="/x", project_dir="/x", host="127.0.0.1", prefect_port=1, mlflow_port=2)
    state.processes = {"worker:a": dead_record("worker:a", [now - 1])}
    assert due_for_restart(state, now) is None  # 1 restart a second ago: wait 2 s
    assert due_for_restart(state, now + 2).name == "worker:a"
    state.processes["mlflow-server"] = dead_record("mlflow-server", [])
    assert due_for_restart(state, now + 2).name == "mlflow-server"  # servers first
    crash_loop = [now - 60 * i for i in reversed(range(RESTART_LIMIT))]
    state.processes = {"serving": dead_record("serving", crash_loop)}
    assert due_for_restart(state, now + 100) is None
    assert [r.name for r in given_up(state, now)] == ["serving"]
    assert given_up(state, now + 3600) == []  # the window has passed: it is tried again
    assert due_for_restart(state, now + 3600).name == "serving"


# ---------------------------------------------------------------- stores


def test_the_local_mlflow_servers_uploads_go_under_home(tmp_path):
    command = mlflow_server_launch(Settings(home=tmp_path), "127.0.0.1", 5000).command
    root = (tmp_path / "mlflow-artifacts").as_uri()
    assert command[command.index("--default-artifact-root") + 1] == root
    assert command[command.index("--artifacts-destination") + 1] == root


def test_a_store_that_cannot_be_written_is_a_storage_error_naming_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError) as refused:
        check_writable(str(blocker / "store"), "The artifact store (MLOPS_ARTIFACT_STORE)")
    assert refused.value.exit_code == 1
    message = str(refused.value)
    assert f"The artifact store (MLOPS_ARTIFACT_STORE), {blocker / 'store'}, cannot" in message
    assert "point it at a writable folder" in message
    check_writable(str(tmp_path / "fine"), "x")
    assert list((tmp_path / "fine").iterdir()) == []  # the probe is removed


# ---------------------------------------------------------------- schedules in `mlops status`


def schedule_of(rule: Any, active: bool = True, age: dt.timedelta = dt.timedelta(hours=1)) -> Any:
    return DeploymentSchedule(schedule=rule, active=active, created=dt.datetime.now(dt.UTC) - age)


def test_schedules_are_described_and_only_live_ones_are_expected_to_have_runs():
    now = dt.datetime.now(dt.UTC)
    nightly = schedule_of(CronSchedule(cron="0 3 * * *", timezone="UTC"))
    paused = schedule_of(IntervalSchedule(interval=dt.timedelta(seconds=1800)), active=False)
    spent, ahead = (
        schedule_of(RRuleSchedule(rrule=f"DTSTART:{when:%Y%m%dT%H%M%S}\nRRULE:FREQ=DAILY;COUNT=1"))
        for when in (now - dt.timedelta(hours=1), now + dt.timedelta(hours=1))
    )
    just_added = schedule_of(CronSchedule(cron="0 3 * * *"), age=dt.timedelta(seconds=5))

    assert describe_schedule(nightly) == "cron '0 3 * * *' (UTC)"
    assert describe_schedule(paused) == "every 1800 s (paused)"
    assert describe_schedule(ahead).startswith("rrule 'DTSTART:")
    assert [expects_runs(s, now) for s in (nightly, paused, spent, ahead, just_added)] == [
        True,  # a cron always has a next time
        False,  # switched off
        False,  # its one run is past
        True,
        False,  # the scheduler's loop may not have seen it yet
    ]
