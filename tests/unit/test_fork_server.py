"""The fork server and the stage launcher, as real processes, with a tiny module for Prefect's engine.

The server (``python -m prefect_mlops.infra.fork_server``) imports a flow file and what it
defers, and forks a child per launcher request; the launcher
(``python -m prefect_mlops.infra.stage_launcher``) stands in for the child: its output, exit
status and signals. ``tiny_stage`` plays ``prefect.engine``: it reports what it was given.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from prefect_mlops.infra.fork_server import ping

STAGE = """
import json, os, signal, sys, time

def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "report"
    report = {
        "pid": os.getpid(),
        "parent": os.getppid(),
        "pgid": os.getpgid(0),
        "cwd": os.getcwd(),
        "marker": os.environ.get("TINY_MARKER"),
        "name": __name__,
        "argv": sys.argv[1:],
        "preloaded": sorted(m for m in ("tiny_heavy", "tiny_deferred") if m in sys.modules),
    }
    print(json.dumps(report), flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    if mode == "exit":
        sys.exit(int(sys.argv[2]))
    if mode == "kill-self":
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "wait-for-term":
        def stop(sig, frame):
            print("stage got SIGTERM", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGTERM, stop)
        print("ready", flush=True)
        time.sleep(60)
    if mode == "sleep":
        time.sleep(60)

if __name__ == "__main__":
    main()
"""
FLOW = """
import tiny_heavy  # what the flow file imports: preloaded by the server
DEFERRED_IMPORTS = ("tiny_deferred",)  # what it imports only when it runs: preloaded too
"""


@dataclass
class Server:
    """A running fork server in a temp folder, with the tiny modules on its PYTHONPATH."""

    process: subprocess.Popen
    socket: Path
    folder: Path
    log: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A launcher's environment: the server's, the socket, and ``extra``."""
        return base_env(self.folder) | {"MLOPS_WARM_SOCKET": str(self.socket)} | extra

    def launch(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect_mlops.infra.stage_launcher",
                "--module",
                "tiny_stage",
                *args,
            ],
            cwd=cwd or self.folder,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, cwd: Path | None = None, **env: str) -> tuple[int, dict, str]:
        """Launch, wait; the exit status, the stage's report and stderr."""
        launcher = self.launch(*args, cwd=cwd, **env)
        out, err = launcher.communicate(timeout=60)
        return launcher.returncode, json.loads(out.splitlines()[0]), err


def base_env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_WARM", "PYTHON"))}
    return env | {"PYTHONPATH": str(folder), "PYTHONUNBUFFERED": "1"}


def start_server(folder: Path, entrypoint: str = "tiny_flow.py:flow") -> Server:
    socket = folder / "run" / "fork-server.sock"
    log = folder / "fork-server.log"
    command = [
        sys.executable,
        "-m",
        "prefect_mlops.infra.fork_server",
        "--socket",
        str(socket),
        "--module",
        "tiny_stage",
        "--entrypoint",
        str(folder / entrypoint),
    ]
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=base_env(folder),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Server(process, socket, folder, log)


def wait_for(check, timeout: float = 20, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not after {timeout} s: {what}")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "tiny_stage.py").write_text(STAGE)
    (tmp_path / "tiny_flow.py").write_text(FLOW)
    (tmp_path / "tiny_heavy.py").write_text("VALUE = 1\n")
    (tmp_path / "tiny_deferred.py").write_text("VALUE = 2\n")
    return tmp_path


@pytest.fixture
def server(folder: Path) -> Iterator[Server]:
    started = start_server(folder)
    try:
        wait_for(lambda: ping(started.socket), what="the fork server answering")
        yield started
    finally:
        started.process.terminate()
        started.process.wait(timeout=10)


def test_a_warm_start_gets_the_launchers_arguments_environment_cwd_and_output(server, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    code, report, err = server.run("report", "extra", cwd=elsewhere, TINY_MARKER="for this run")

    assert code == 0, err
    assert report["name"] == "__main__" and report["argv"] == ["report", "extra"]
    assert report["cwd"] == str(elsewhere) and report["marker"] == "for this run"
    assert report["preloaded"] == ["tiny_deferred", "tiny_heavy"]  # imported before the fork
    assert report["parent"] == server.process.pid  # forked by the server...
    assert report["pgid"] == report["pid"]  # ...in a process group of its own
    assert "a line on stderr" in err and "Warm start: forked by the fork server" in err
    assert f"Flow run -: forked pid {report['pid']}" in server.log.read_text()
    assert ping(server.socket)["served"] == 1


def test_exit_statuses_pass_through_the_launcher(server):
    assert server.run("exit", "3")[0] == 3
    assert server.run("kill-self")[0] == -signal.SIGKILL  # killed by the same signal
    assert server.run("exit", "0")[0] == 0


def test_sigterm_to_the_launcher_is_forwarded_to_its_stage(server):
    launcher = server.launch("wait-for-term")
    assert launcher.stdout is not None
    report = json.loads(launcher.stdout.readline())
    assert launcher.stdout.readline().strip() == "ready"

    launcher.send_signal(signal.SIGTERM)  # how a worker cancels a flow run
    out, _ = launcher.communicate(timeout=30)

    assert "stage got SIGTERM" in out
    assert launcher.returncode == 7  # the stage's own exit status
    assert not psutil.pid_exists(report["pid"]) or psutil.Process(report["pid"]).status() == (
        psutil.STATUS_ZOMBIE
    )


def test_a_launcher_killed_outright_takes_its_stage_with_it(server):
    launchers = [server.launch("sleep") for _ in range(2)]
    reports = [json.loads(launcher.stdout.readline()) for launcher in launchers]

    launchers[0].kill()  # SIGKILL: what a worker does when a run does not stop in time
    launchers[0].wait(timeout=10)

    def gone(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    wait_for(lambda: gone(reports[0]["pid"]), what="the orphaned stage killed")
    assert not gone(reports[1]["pid"])  # the other launcher's stage runs on
    assert "its launcher went away" in server.log.read_text()
    launchers[1].send_signal(signal.SIGTERM)
    assert launchers[1].wait(timeout=10) == -signal.SIGTERM
    wait_for(lambda: gone(reports[1]["pid"]), what="the second stage ended")


def test_without_a_fork_server_the_launcher_starts_the_module_cold(server, tmp_path):
    code, report, err = server.run("exit", "4", MLOPS_WARM_SOCKET=str(tmp_path / "none.sock"))

    assert code == 4
    assert report["preloaded"] == [] and report["name"] == "__main__"
    assert report["parent"] != server.process.pid
    assert "no warm start from" in err and "starting cold (python -m tiny_stage)" in err


def test_warm_stages_off_starts_cold_without_a_note(server):
    code, report, err = server.run(MLOPS_WARM_STAGES="false")

    assert code == 0 and report["preloaded"] == []
    assert "stage launcher" not in err and "Warm start" not in err


def test_a_request_whose_python_variables_differ_is_declined(server):
    code, report, err = server.run(PYTHONHASHSEED="123")

    assert code == 0 and report["preloaded"] == []
    assert "its PYTHONHASHSEED differ from the fork server's" in err


def test_changed_code_is_declined_and_the_server_starts_afresh(server, folder):
    pid = server.process.pid
    heavy = folder / "tiny_heavy.py"
    heavy.write_text("VALUE = 3\n")
    os.utime(heavy, ns=(time.time_ns(), time.time_ns() + 10**9))

    code, report, err = server.run()

    assert code == 0 and report["preloaded"] == []
    assert "the code changed since the fork server started" in err
    wait_for(lambda: (ping(server.socket) or {}).get("stale") is False, what="started afresh")
    assert ping(server.socket)["pid"] == pid  # the same process, exec'd
    code, report, _ = server.run()
    assert code == 0 and report["preloaded"] == ["tiny_deferred", "tiny_heavy"]


def test_imports_that_start_a_thread_keep_the_server_from_serving(folder):
    (folder / "threaded_flow.py").write_text(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(30,), name='busy', daemon=True).start()\n"
    )
    server = start_server(folder, "threaded_flow.py:flow")

    assert server.process.wait(timeout=30) == 1
    log = server.log.read_text()
    assert "Not serving: importing the flows started threads (busy)" in log
    assert not server.socket.exists()
