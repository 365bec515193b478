"""A model's files are loaded and checked in a child process before the caller loads them.

A model family's native parser need not raise on a damaged model file: a truncated file can
crash it (SIGSEGV) and a malformed line abort it (SIGABRT), taking the whole process down.
So neither the serving process nor a pipeline stage parses a model from the registry first.
Its files are downloaded once; a fresh interpreter (``python -m prefect_mlops.mlops.model_check
FOLDER URI MEMORY_MB``) reads them, predicts the input example and checks the answer (finite
values, one row per input row), under a time limit and a cap on the memory it may add; only
when it exits cleanly does the caller read the same files. A child that crashes, is killed,
runs out of time or memory, or fails the check makes the model refused with the reason
(the library's own last words where it printed any); the caller never touched it.

The child imports only the family's predictor (its library, numpy, pandas and the feature
code; optional scikit-learn and Dask integrations are kept out) and runs on one thread, so a
check costs about a second of one core.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

UNNEEDED_IN_CHILD = ("sklearn", "dask", "distributed", "matplotlib", "graphviz", "datatable")
"""Packages a family's library imports when present, which the check does not need (a second
of start-up)."""
MESSAGE_CHARS = 160


@dataclass(frozen=True)
class ModelCheckLimits:
    """How long the child checking a candidate may take, and how much memory it may add."""

    timeout_s: float = 60.0
    memory_mb: int = 4096
    """Address space the child may add after its imports, to read and check the model (0: no cap)."""


class ModelCheckFailed(Exception):
    """The child process refused the candidate, crashed on it or was stopped; says which."""


def check_in_child(folder: Path, uri: str, limits: ModelCheckLimits) -> float:
    """Load and check the files of the model ``uri`` under ``folder`` in a child process.

    Returns:
        How long the check took, in seconds (the child's start-up included).

    Raises:
        ModelCheckFailed: the check failed, or the child crashed, timed out or ran out of memory.
    """
    command = [
        sys.executable,
        "-m",
        "prefect_mlops.mlops.model_check",
        str(folder),
        uri,
        str(limits.memory_mb),
    ]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            stdin=subprocess.DEVNULL,
            timeout=limits.timeout_s,
            env=_child_env(),
        )
    except subprocess.TimeoutExpired:
        raise ModelCheckFailed(
            f"loading and checking it took more than {limits.timeout_s:g} s, so the check was "
            "stopped (MLOPS_MODEL_CHECK_TIMEOUT_S)"
        ) from None
    if done.returncode != 0:
        raise ModelCheckFailed(_why(done.returncode, done.stderr, limits, _library(folder)))
    return time.perf_counter() - started


def _library(folder: Path) -> tuple[str, str]:
    """The name of the library the model's family reads it with, and its fatal-error prefix."""
    # Imported here: this module is imported for its limits (settings) and by the child
    # before it keeps unneeded packages out, so it imports nothing but the standard library.
    from .families import model_family, predictor_module
    from .prediction import INFO_FILE

    info = next(folder.rglob(INFO_FILE), None)
    family = model_family(info.parent) if info is not None else model_family(folder)
    try:
        module = predictor_module(family)
    except KeyError:
        return family, ""
    return module.LIBRARY, module.FATAL_PREFIX


def _child_env() -> dict[str, str]:
    """The serving process's environment, with this project importable and OpenMP on one thread."""
    root = str(Path(sys.modules["prefect_mlops"].__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return os.environ | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _why(returncode: int, stderr: str, limits: ModelCheckLimits, library: tuple[str, str]) -> str:
    library_name, fatal = library
    said = _last_words(stderr, fatal)
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        crash = f"the child process loading it crashed ({name})"
        return f"{crash}; {library_name} said: {said}" if said else crash
    if "MemoryError" in said or "bad_alloc" in said:
        return (
            f"loading it needed more than {limits.memory_mb} MiB "
            f"(MLOPS_MODEL_CHECK_MEMORY_MB): {said}"
        )
    return said or f"the check exited with status {returncode}"


def _last_words(stderr: str, fatal_prefix: str) -> str:
    """The library's fatal message if it printed one, else the last line the child wrote."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [
        line.removeprefix(fatal_prefix).strip()
        for line in lines
        if fatal_prefix and line.startswith(fatal_prefix)
    ]
    chosen = fatal[-1] if fatal else (lines[-1] if lines else "")
    return chosen if len(chosen) <= MESSAGE_CHARS else chosen[:MESSAGE_CHARS] + "..."


# ---------------------------------------------------------------- the child


def _cap_memory(memory_mb: int) -> None:
    """Let this process grow its address space by at most ``memory_mb`` from here (Linux)."""
    if memory_mb <= 0 or not sys.platform.startswith("linux"):
        return
    import resource

    page = os.sysconf("SC_PAGE_SIZE")
    in_use = int(Path("/proc/self/statm").read_text().split()[0]) * page
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = in_use + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard < 0 else min(cap, hard), hard))


def main(argv: list[str]) -> int:
    """The child: read and check the files in ``argv[0]`` (of the model ``argv[1]``).

    Prints the outcome as JSON on stdout, or the error as its last line on stderr (exit 1).
    """
    folder, uri, memory_mb = Path(argv[0]), argv[1], int(argv[2])
    for name in UNNEEDED_IN_CHILD:
        sys.modules.setdefault(name, None)  # an import of it fails; the library does without
    from .model_files import check_predictions, read_pipeline_model

    _cap_memory(memory_mb)
    started = time.perf_counter()
    try:
        rows = check_predictions(read_pipeline_model(folder, uri))
    except Exception as error:  # the parent reports it; the last line is what it shows
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"rows": rows, "seconds": time.perf_counter() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
