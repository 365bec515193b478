"""The stack's fork server: flow-run processes forked from one that has imported the flows.

``mlops up`` starts it (``python -m prefect_mlops.infra.fork_server --socket PATH --entrypoint
flows/train.py:train_flow ...``, every deployment's entrypoint). It imports Prefect's engine and
the project's flow files once, then listens on a Unix socket under the stack's home. For each
flow run, a pool's process worker starts the stage launcher (``infra/stage_launcher.py``), which
sends the process's arguments, environment, working directory and its stdin, stdout and stderr
here; the fork server forks, and the child takes them on and runs ``prefect.engine`` as
``__main__``: what ``python -m prefect.engine`` would have run, without importing anything
again. Each flow run still gets a process of its own, in a process group of its own, with the
environment its worker gave it. Besides the flows' own imports, the server imports what their
modules defer to the functions that need it and name in ``DEFERRED_IMPORTS`` (Great
Expectations, which only the data gate's checkpoint imports, say).

The server is one thread, so forking is safe: a selector waits on the socket, the launchers'
connections and a wakeup pipe that SIGCHLD writes to; reaped children's exit statuses go back
to their launchers. A launcher that goes away (its worker killed it outright, or died) gets its
child's process group killed. A request the server cannot serve as a cold start would (another
Python environment, other ``PYTHON*`` or ``PREFECT_LOGGING_*`` variables, a thread started
since the imports) is declined, and the launcher starts the run cold. So is every request once
a file of an imported module changed: the server then starts itself afresh (``exec``, same pid)
as soon as no child of its own runs, so edited code is never run stale.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_mlops.infra.stage_launcher import (
    ENGINE,
    PROTOCOL,
    encode,
    read_message,
)

logger = logging.getLogger("prefect_mlops.infra.fork_server")

ENGINE_MODULES = (
    "prefect.engine",
    "prefect.flow_engine",
    "prefect._internal.metrics",
    "prefect.task_engine",
    "prefect.deployments.steps",
    "prefect.utilities.visualization",
)
"""What ``python -m prefect.engine`` imports to run a deployment's flow run: the engine, the
pull steps, the task engine, the flow's visualisation check."""
REQUEST_TIMEOUT_S = 5.0
"""How long a launcher has to send its whole request once connected."""
MAX_SOCKET_PATH = 107
"""The longest path a Unix socket may have on Linux (``sun_path`` is 108 bytes)."""
MATCHING_PREFIXES = (
    "PYTHON",
    "PREFECT_LOGGING_",
    "DASK_",
    "OMP_",
    "OPENBLAS_",
    "MKL_",
    "LD_",
    "MALLOC_",
    "LC_",
    "LANG",
    "TZ",
)
"""Variables read once, when the interpreter starts or a module the server imported set itself
up (Prefect's logging, Dask's config, the thread pools of OpenMP and BLAS that LightGBM and
NumPy load, the C library's allocator and locale): a request whose environment differs in one
of them is started cold."""


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class ForkUnsafe(RuntimeError):
    """The imports started a thread: forking this process could deadlock its children."""


@dataclass
class Job:
    """What a forked child runs: the launcher's request and its three file descriptors."""

    module: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    fds: list[int]


@dataclass
class Child:
    """A forked process whose launcher waits for it."""

    connection: socket.socket | None
    flow_run: str
    started: float = field(default_factory=time.monotonic)


def socket_path_fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= MAX_SOCKET_PATH


def load_entrypoint(entrypoint: str) -> tuple[str, ...]:
    """Import what a deployment's entrypoint imports (``path/to/flow.py:fn`` or ``module:fn``).

    A flow file is run as a module under a throw-away name, as Prefect's engine loads it, and
    dropped again: what stays are the modules it imported, which is what the forked children
    reuse. The engine loads the file itself in each child (milliseconds, its imports cached).

    Returns:
        What the flow's module names in ``DEFERRED_IMPORTS`` (see :func:`import_deferred`).
    """
    target = entrypoint.rsplit(":", 1)[0]
    if not target.endswith(".py"):
        return tuple(vars(importlib.import_module(target)).get("DEFERRED_IMPORTS", ()))
    name = f"__fork_server_preload_{Path(target).stem}__"
    spec = importlib.util.spec_from_file_location(name, target)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {target}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return tuple(vars(module).get("DEFERRED_IMPORTS", ()))


def import_deferred(named_elsewhere: tuple[str, ...] = ()) -> list[tuple[str, Exception]]:
    """Import what the imported modules name in ``DEFERRED_IMPORTS``, until nothing new is named.

    A module that imports a heavy library only inside the functions that use it (so that
    importing the module stays cheap) names it there; a fork server imports it ahead, so the
    stage that calls those functions does not pay for the import in every run.

    Args:
        named_elsewhere: Names from modules no longer imported (the flow files, run and dropped).

    Returns:
        The names that failed to import, with their errors (an optional library, say).
    """
    done: set[str] = set()
    failed = []
    while True:
        named = {
            name
            for module in list(sys.modules.values())
            for name in getattr(module, "__dict__", {}).get("DEFERRED_IMPORTS", ())
        }
        named = (named | set(named_elsewhere)) - done
        if not named:
            return failed
        for name in sorted(named):
            done.add(name)
            try:
                importlib.import_module(name)
            except Exception as error:  # an optional library that is not installed
                failed.append((name, error))


def file_identity(path: str) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten, even by a copy that keeps its modification time
    (``cp -p``, ``rsync -a``): modification and change times (ns), size and inode."""
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino


def module_files() -> dict[str, tuple[int, int, int, int]]:
    """Each imported module's file and its :func:`file_identity`."""
    files = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            with contextlib.suppress(OSError):
                files[path] = file_identity(path)
    return files


def changed_files(snapshot: dict[str, tuple[int, int, int, int]]) -> list[str]:
    """The files of ``snapshot`` changed (or removed) since it was taken."""
    changed = []
    for path, identity in snapshot.items():
        try:
            if file_identity(path) != identity:
                changed.append(path)
        except OSError:
            changed.append(path)
    return changed


def matching_variables(env: dict[str, str]) -> dict[str, str]:
    """The variables a request must share with the server, Prefect's lists in order.

    A worker passes its Prefect settings on re-written (``PREFECT_LOGGING_EXTRA_LOGGERS``
    sorted): the same setting, so the same imports.
    """
    found = {}
    for name, value in env.items():
        if name.startswith("PREFECT_LOGGING_"):
            found[name] = ",".join(sorted(part.strip() for part in value.split(",")))
        elif name.startswith(MATCHING_PREFIXES):
            found[name] = value
    return found


class ForkServer:
    """Preloads the flows, then forks a process per launcher request (one thread)."""

    def __init__(self, path: Path, entrypoints: list[str], module: str = ENGINE) -> None:
        self.path = path
        self.entrypoints = entrypoints
        self.module = module
        self.children: dict[int, Child] = {}
        self.snapshot: dict[str, int] = {}
        self.start_env = dict(os.environ)
        self.served = 0
        self.stale: list[str] = []
        self.stopping = False
        self.listener: socket.socket | None = None
        self.selector: selectors.BaseSelector | None = None
        self.wakeup: tuple[int, int] | None = None
        self.server_pid = os.getpid()

    # ------------------------------------------------------------ start-up

    def preload(self) -> float:
        """Import the engine and the flow files; returns the seconds it took.

        Raises:
            ForkUnsafe: if a thread is running afterwards.
        """
        started = time.perf_counter()
        for name in ENGINE_MODULES if self.module == ENGINE else (self.module,):
            importlib.import_module(name)
        deferred: list[str] = []
        for entrypoint in self.entrypoints:
            try:
                deferred += load_entrypoint(entrypoint)
            except Exception as error:  # a broken flow file fails its own runs, not the others'
                logger.warning(
                    "Not preloaded: %s (%s: %s)", entrypoint, type(error).__name__, error
                )
        for name, error in import_deferred(tuple(deferred)):
            logger.warning("Not preloaded: %s (%s: %s)", name, type(error).__name__, error)
        threads = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        if threads:
            raise ForkUnsafe(
                f"importing the flows started threads ({', '.join(threads)}); "
                "a forked child would inherit their locks but not them. Find the import that "
                "starts them (a module must not start work when imported)."
            )
        gc.collect()
        gc.freeze()  # the children's collections leave these objects (and their pages) alone
        self.snapshot = module_files()
        return time.perf_counter() - started

    def listen(self) -> None:
        """Bind the socket (owner only), and wake the loop on SIGCHLD, SIGTERM and SIGINT.

        Raises:
            OSError: if another fork server answers on the socket already.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.parent.chmod(0o700)
        if self.path.exists():
            if _answers(self.path):
                raise OSError(f"another fork server answers on {self.path}")
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        self.path.chmod(0o600)
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener
        read, write = os.pipe()
        os.set_blocking(write, False)
        self.wakeup = (read, write)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, _ignore)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        self.selector = selectors.DefaultSelector()
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        self.selector.register(read, selectors.EVENT_READ, "wakeup")

    def _stop(self, _sig: int, _frame: object) -> None:
        self.stopping = True

    # ------------------------------------------------------------ the loop

    def serve(self) -> Job | None:
        """Serve until SIGTERM. Returns only in a forked child, with what it must run."""
        assert self.selector is not None
        while not self.stopping:
            for key, _ in self.selector.select():
                if key.data == "listener":
                    job = self._accept()
                    if job is not None:
                        return job
                elif key.data == "wakeup":
                    os.read(key.fd, 4096)
                    self._reap()
                else:
                    self._launcher_spoke(key.data)
            if self.stale and not self.children:
                self._start_afresh()
        self.close()
        return None

    def close(self) -> None:
        """Stop listening and remove the socket (in the server only)."""
        if self.listener is not None:
            self.listener.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _accept(self) -> Job | None:
        assert self.listener is not None
        try:
            connection, _ = self.listener.accept()
        except BlockingIOError:
            return None
        connection.setblocking(True)
        connection.settimeout(REQUEST_TIMEOUT_S)
        try:
            message, fds = _receive(connection)
        except (OSError, ValueError) as error:
            logger.warning("A request could not be read: %s", error)
            connection.close()
            return None
        try:
            return self._answer(connection, message, fds)
        finally:
            if os.getpid() == self.server_pid:  # not in a forked child
                for fd in fds:
                    os.close(fd)

    def _answer(self, connection: socket.socket, message: dict, fds: list[int]) -> Job | None:
        if message.get("ping"):
            _send_quietly(connection, {"pong": self.describe()})
            connection.close()
            return None
        reason = self._decline_reason(message, fds)
        if reason is not None:
            logger.info("Declined launcher %s: %s", message.get("launcher_pid"), reason)
            _send_quietly(connection, {"declined": reason})
            connection.close()
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        # A signal forwarded as soon as the launcher learns the pid must reach the child's
        # default handlers, not this server's: held back until the child has reset them.
        held = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._become_child(connection)
            signal.pthread_sigmask(signal.SIG_SETMASK, set())
            return Job(message["module"], message["argv"], message["env"], message["cwd"], fds)
        with contextlib.suppress(OSError):  # the child may have done it first
            os.setpgid(pid, pid)  # so that killing its group can never miss it
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        flow_run = message["env"].get("PREFECT__FLOW_RUN_ID", "-")
        self.children[pid] = Child(connection, flow_run)
        self.served += 1
        if not _send_quietly(connection, {"pid": pid}):
            self._kill(pid, "its launcher left before it started")
            return None
        assert self.selector is not None
        connection.settimeout(None)
        self.selector.register(connection, selectors.EVENT_READ, pid)
        logger.info(
            "Flow run %s: forked pid %d for launcher pid %s",
            flow_run,
            pid,
            message.get("launcher_pid"),
        )
        return None

    def _decline_reason(self, message: dict, fds: list[int]) -> str | None:
        if message.get("protocol") != PROTOCOL:
            return f"protocol {message.get('protocol')}, this server speaks {PROTOCOL}"
        if message.get("module") != self.module:
            return f"it runs {message.get('module')}, this server {self.module}"
        if (message.get("prefix"), message.get("python")) != (
            os.path.realpath(sys.prefix),
            sys.version,
        ):
            return f"another Python ({message.get('executable')}; this one: {sys.executable})"
        if len(fds) != 3:
            return f"{len(fds)} file descriptors instead of stdin, stdout and stderr"
        differs = sorted(
            set(matching_variables(message["env"]).items())
            ^ set(matching_variables(self.start_env).items())
        )
        if differs:
            names = sorted({name for name, _ in differs})
            return f"its {', '.join(names)} differ from the fork server's (read at start-up)"
        if threading.active_count() > 1:
            return "a thread runs in the fork server; forking is not safe"
        if not self.stale:
            self.stale = changed_files(self.snapshot)
            if self.stale:
                logger.warning(
                    "%d imported file(s) changed since start-up (%s): declining until the "
                    "%d running child(ren) end, then starting afresh",
                    len(self.stale),
                    self.stale[0],
                    len(self.children),
                )
        if self.stale:
            return f"the code changed since the fork server started ({self.stale[0]})"
        return None

    def _become_child(self, connection: socket.socket) -> None:
        """In the forked child: drop the server's sockets, signal handlers and process group."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        assert self.selector is not None and self.listener is not None and self.wakeup
        self.selector.close()
        self.listener.close()
        for fd in self.wakeup:
            os.close(fd)
        for child in self.children.values():
            if child.connection is not None:
                child.connection.close()
        connection.close()
        os.setpgid(0, 0)

    def _launcher_spoke(self, pid: int) -> None:
        """A launcher's connection became readable: it only ever closes (it went away)."""
        child = self.children.get(pid)
        if child is None or child.connection is None:
            return
        try:
            data = child.connection.recv(1)
        except OSError:
            data = b""
        if not data:
            self._forget_connection(child)
            self._kill(pid, "its launcher went away (killed by its worker, or the worker died)")

    def _kill(self, pid: int, why: str) -> None:
        logger.warning("Killing process group %d: %s", pid, why)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)  # itself, whatever its group

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            logger.info(
                "Flow run %s: pid %d exited %d after %.1f s",
                child.flow_run,
                pid,
                code,
                time.monotonic() - child.started,
            )
            if child.connection is not None:
                _send_quietly(child.connection, {"exit": code})
                self._forget_connection(child)

    def _forget_connection(self, child: Child) -> None:
        assert self.selector is not None and child.connection is not None
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.connection)
        child.connection.close()
        child.connection = None

    def _start_afresh(self) -> None:
        """Run this server again in this process (same pid), with the code as it is now."""
        logger.warning("Starting afresh to import the changed code")
        self.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    def describe(self) -> dict[str, Any]:
        """What ``mlops status`` shows: who serves, how much it preloaded, how many it forked."""
        return {
            "pid": os.getpid(),
            "modules": len(sys.modules),
            "served": self.served,
            "running": len(self.children),
            "stale": bool(self.stale),
        }


def _ignore(_sig: int, _frame: object) -> None:
    """A Python-level handler, so that the signal reaches the wakeup pipe."""


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    """A launcher's request and the file descriptors that came with it."""
    data, fds, flags, _ = socket.recv_fds(connection, 65536, 3)
    try:
        if flags & socket.MSG_CTRUNC:
            raise ValueError("file descriptors were cut off")
        while len(data) < 4:
            more = connection.recv(65536)
            if not more:
                raise ValueError("the request ended early")
            data += more
        (size,) = struct.unpack("!I", data[:4])
        while len(data) < 4 + size:
            more = connection.recv(max(65536, 4 + size - len(data)))
            if not more:
                raise ValueError("the request ended early")
            data += more
        return json.loads(data[4 : 4 + size]), fds
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise


def _send_quietly(connection: socket.socket, message: dict) -> bool:
    try:
        connection.sendall(encode(message))
    except OSError:
        return False
    return True


def _answers(path: Path) -> bool:
    """Whether a fork server answers a ping on ``path``."""
    return ping(path) is not None


def ping(path: Path, timeout: float = 2.0) -> dict[str, Any] | None:
    """The fork server's description (see ``ForkServer.describe``), or None if none answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(encode({"protocol": PROTOCOL, "ping": True}))
            reply = read_message(sock)
    except (OSError, ValueError):
        return None
    return None if reply is None else reply.get("pong")


# ---------------------------------------------------------------- the child


def refresh_process_state() -> None:
    """What the fork server's imports read from its environment, read again from the run's.

    Prefect's settings, the project's settings and Dask's configuration are read once per
    process; NumPy's global random state would be the same in every child.
    """
    context = sys.modules.get("prefect.context")
    if context is not None:
        context.refresh_global_settings_context()
    settings = sys.modules.get("prefect_mlops.mlops.settings")
    if settings is not None:
        settings.get_settings.cache_clear()
    dask_config = sys.modules.get("dask.config")
    if dask_config is not None:
        dask_config.refresh()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def run_job(job: Job) -> int:
    """In the forked child: take on the launcher's process and run the module as ``__main__``."""
    for target, fd in enumerate(job.fds):
        os.dup2(fd, target)
    for fd in job.fds:
        os.close(fd)
    os.environ.clear()
    os.environ.update(job.env)
    os.chdir(job.cwd)
    refresh_process_state()
    print(
        f"Warm start: forked by the fork server (pid {os.getppid()}), "
        f"{len(sys.modules)} modules already imported",
        file=sys.stderr,
        flush=True,
    )
    sys.argv = [sys.argv[0], *job.argv]
    # runpy warns that the module is imported already: that is the point.
    warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
    runpy.run_module(job.module, run_name="__main__", alter_sys=True)
    return 0


# ---------------------------------------------------------------- main


def _log_to_stderr() -> None:
    """This module's lines to stderr (the server's log), the root logger left to Prefect.

    Prefect configures logging when imported, unless the root logger has a handler already;
    the children must get Prefect's configuration, as a cold start does.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    """Serve warm starts until SIGTERM (in a forked child: run its flow run)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", type=Path, required=True, help="Where to listen.")
    parser.add_argument(
        "--entrypoint",
        action="append",
        default=[],
        help="A deployment's entrypoint (path/to/flow.py:fn) to import; repeat for each.",
    )
    parser.add_argument("--module", default=ENGINE, help="What a child runs as __main__.")
    args = parser.parse_args(argv)
    # A process started while its parent held SIGTERM back (the supervisor does, while it
    # records a restart) inherits the block; this server and every run it forks must not.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    _log_to_stderr()
    if not socket_path_fits(args.socket):
        logger.error("The socket path %s is too long for a Unix socket: not serving", args.socket)
        return 2
    server = ForkServer(args.socket, args.entrypoint, args.module)
    try:
        seconds = server.preload()
    except ForkUnsafe as error:
        logger.error("Not serving: %s", error)
        return 1
    server.listen()
    logger.info(
        "Serving on %s: %d modules imported in %.1f s (%s)",
        args.socket,
        len(sys.modules),
        seconds,
        ", ".join(args.entrypoint) or args.module,
    )
    job = server.serve()
    if job is None:
        logger.info("Stopped")
        return 0
    return run_job(job)


if __name__ == "__main__":
    raise SystemExit(main())
