"""Rotation of the stack's logs: copied, then emptied under a writer that keeps its descriptor."""

from __future__ import annotations

import subprocess
import sys

from prefect_mlops.infra.stack.logs import rotate_logs

WRITER = """
import sys
sys.stdout.write("x" * 5000 + "\\n"); sys.stdout.flush()
sys.stderr.write("written\\n"); sys.stderr.flush()
sys.stdin.readline()
sys.stdout.write("after the rotation\\n"); sys.stdout.flush()
"""


def test_a_log_over_the_limit_is_copied_and_emptied_under_its_running_writer(tmp_path):
    log = tmp_path / "serving.log"
    with log.open("ab") as out:  # as infra/stack/processes.py starts every component
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER],
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        assert writer.stderr.readline() == "written\n"
        small = tmp_path / "worker-etl-pool.log"
        small.write_text("short\n")

        rotated = rotate_logs(tmp_path, max_bytes=1000, keep=2)

        assert rotated == [(log, 5001)]
        assert (tmp_path / "serving.log.1").read_text() == "x" * 5000 + "\n"
        assert log.stat().st_size == 0 and small.read_text() == "short\n"
        writer.stdin.write("go\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        writer.kill()
        writer.wait()
    # The writer's next line lands at the start of the emptied file: no hole of zero bytes.
    assert log.read_bytes() == b"after the rotation\n"


def test_older_copies_shift_and_only_the_kept_number_stays(tmp_path):
    log = tmp_path / "supervisor.log"
    for round_ in range(1, 4):
        log.write_text(f"round {round_}\n" * 100)
        assert [path for path, _ in rotate_logs(tmp_path, max_bytes=10, keep=2)] == [log]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "supervisor.log",
        "supervisor.log.1",
        "supervisor.log.2",
    ]
    assert (tmp_path / "supervisor.log.1").read_text().startswith("round 3")
    assert (tmp_path / "supervisor.log.2").read_text().startswith("round 2")


def test_no_limit_or_no_copies_kept(tmp_path):
    log = tmp_path / "deploy.log"
    log.write_text("y" * 100)
    assert rotate_logs(tmp_path, max_bytes=0, keep=3) == []
    assert log.stat().st_size == 100
    assert rotate_logs(tmp_path, max_bytes=10, keep=0) == [(log, 100)]
    assert log.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["deploy.log"]
