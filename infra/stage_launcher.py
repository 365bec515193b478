"""A stage's process, started warm: ``python -m prefect_mlops.infra.stage_launcher [ARGS]``.

The local stack's process workers run this instead of ``python -m prefect.engine`` (the
``command`` job variable of the local pools in ``prefect.yaml``). It asks the stack's fork server
(``infra/fork_server.py``, socket in ``MLOPS_WARM_SOCKET``) to fork a process that has already
imported Prefect's engine and the project's flows, hands it its arguments, environment, working
directory and standard input, output and error, and then stands in for it: it forwards SIGTERM
and SIGINT to it (Prefect cancels a run by signalling the process it started) and exits as it
exits, with its exit code, or killed by the same signal. If this process is killed outright
(SIGKILL), the fork server sees its connection close and kills the forked process's group.

When no fork server answers (none started, dead, another version, or it declined the request),
it becomes ``python -m prefect.engine`` itself (``exec``), after a one-line note on stderr, so a
stage always runs. ``MLOPS_WARM_STAGES=false`` in its environment (a deployment's job variables,
say) starts it cold without a note.

Only the standard library is imported here: this runs once per flow run and must start fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys

PROTOCOL = 1
"""Version of the request and replies below; the fork server declines another."""
SOCKET_VARIABLE = "MLOPS_WARM_SOCKET"
SWITCH_VARIABLE = "MLOPS_WARM_STAGES"
ENGINE = "prefect.engine"
CONNECT_TIMEOUT_S = 5.0
"""How long to wait for the fork server to take the request and say what it forked."""
FORWARDED = (signal.SIGTERM, signal.SIGINT)
OFF = frozenset({"0", "off", "f", "false", "n", "no"})
"""The values pydantic reads as false for ``MLOPS_WARM_STAGES``."""
HEADER = struct.Struct("!I")


class Declined(Exception):
    """The fork server did not fork: its reason, or why it could not be asked."""


def encode(message: dict) -> bytes:
    """One message on the wire: its length, then its JSON."""
    body = json.dumps(message).encode()
    return HEADER.pack(len(body)) + body


def read_message(sock: socket.socket) -> dict | None:
    """The next message from ``sock``; None when it closed first."""
    header = _read_exactly(sock, HEADER.size)
    if header is None:
        return None
    body = _read_exactly(sock, HEADER.unpack(header)[0])
    return None if body is None else json.loads(body)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def parse_arguments(argv: list[str]) -> tuple[str, list[str]]:
    """``[--module MODULE] ARGS...``: the module to run as ``__main__`` and its arguments."""
    if argv[:1] == ["--module"] and len(argv) >= 2:
        return argv[1], argv[2:]
    return ENGINE, argv


def request(module: str, args: list[str]) -> dict:
    """What the fork server needs to start the process this one would have been."""
    return {
        "protocol": PROTOCOL,
        "module": module,
        "argv": args,
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "executable": sys.executable,
        "prefix": os.path.realpath(sys.prefix),
        "python": sys.version,
        "launcher_pid": os.getpid(),
    }


def ask_fork_server(path: str, message: dict) -> tuple[socket.socket, int]:
    """Send the request with this process's stdin, stdout and stderr; returns the forked pid.

    Raises:
        Declined: the server is not there, did not answer in time, or declined.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT_S)
        sock.connect(path)
        data = encode(message)
        sent = socket.send_fds(sock, [data], [0, 1, 2])
        if sent < len(data):
            sock.sendall(data[sent:])
        reply = read_message(sock)
    except (OSError, ValueError) as error:
        sock.close()
        raise Declined(f"{type(error).__name__}: {error}") from None
    if reply is None or "pid" not in reply:
        sock.close()
        raise Declined((reply or {}).get("declined", "it closed the connection"))
    sock.settimeout(None)
    return sock, int(reply["pid"])


class Forwarder:
    """Passes SIGTERM and SIGINT on to the forked process; remembers them until its pid is known."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.pending: list[int] = []

    def install(self) -> None:
        for sig in FORWARDED:
            signal.signal(sig, self._handle)

    def forward_to(self, pid: int) -> None:
        self.pid = pid
        for sig in self.pending:
            self._send(sig)
        self.pending.clear()

    def _handle(self, sig: int, _frame: object) -> None:
        if self.pid is None:
            self.pending.append(sig)
        else:
            self._send(sig)

    def _send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)


def wait_for_exit(sock: socket.socket, pid: int) -> int:
    """The forked process's exit status as ``subprocess`` gives it (negative: killed by a signal).

    The fork server sends it when it reaps the process. Should the server go away first, the
    process is waited for directly; its status is then unknown and reported as 1.
    """
    try:
        reply = read_message(sock)
    except OSError:
        reply = None
    if reply is not None and "exit" in reply:
        return int(reply["exit"])
    print(
        f"stage launcher: the fork server went away while process {pid} ran; waiting for it "
        "(its exit status is lost: reporting 1)",
        file=sys.stderr,
        flush=True,
    )
    _wait_for_pid(pid)
    return 1


def _wait_for_pid(pid: int) -> None:
    try:
        handle = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return
    try:
        while True:
            try:
                select.select([handle], [], [])
                return
            except InterruptedError:  # a forwarded signal; keep waiting
                continue
    finally:
        os.close(handle)


def exit_like(status: int) -> None:
    """Exit with ``status``; a negative one by being killed with the same signal."""
    if status < 0:
        sig = -status
        if sig in FORWARDED:  # back to the default action (SIGKILL's cannot be changed)
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        status = 128 + sig  # a signal whose default action does not end the process
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def run_cold(module: str, args: list[str], note: str | None, pending: list[int]) -> None:
    """Become ``python -m MODULE ARGS`` (the way Prefect starts a flow run process)."""
    if pending:  # asked to stop before anything started: stop
        exit_like(-pending[0])
    if note:
        print(f"stage launcher: {note}; starting cold (python -m {module})", file=sys.stderr)
        sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


def main(argv: list[str] | None = None) -> None:
    module, args = parse_arguments(sys.argv[1:] if argv is None else argv)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # see fork_server.main
    # A session of its own, as Prefect gives a flow run it starts itself: a signal sent to
    # the worker's process group does not reach the run (a configured command gets none).
    with contextlib.suppress(OSError):  # already a session leader
        os.setsid()
    path = os.environ.get(SOCKET_VARIABLE)
    if not path or os.environ.get(SWITCH_VARIABLE, "").strip().lower() in OFF:
        run_cold(module, args, None, [])
    forwarder = Forwarder()
    forwarder.install()
    try:
        sock, pid = ask_fork_server(path, request(module, args))
    except Declined as declined:
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        run_cold(module, args, f"no warm start from {path} ({declined})", forwarder.pending)
    forwarder.forward_to(pid)
    exit_like(wait_for_exit(sock, pid))


if __name__ == "__main__":
    main()
