"""What the allocator may choose from: this machine's cores, memory and GPUs, or a cluster's limits."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import psutil
from dask.utils import format_bytes, parse_bytes

from .history import ClusterShape
from .machines import Catalogue
from .profiling import host_cpus

GIB = 2**30
MEMORY_LADDER_GIB = (0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
"""Memory limits per worker the allocator chooses between."""


@dataclass(frozen=True)
class Resources:
    """The largest cluster that can be built, and how many GPUs exist."""

    max_workers: int
    max_threads_per_worker: int
    memory_bytes: int = 0
    """Memory for all workers together."""
    gpus: int = 0
    gpu_note: str | None = None
    """Why there is no GPU, when there is none."""
    backend: str = "local"
    fixed_worker: bool = False
    """An existing cluster's workers: their threads and memory are what they are, only how many
    of them a run gets can be chosen."""
    description: str | None = None
    """The existing cluster, in words, for the rationale."""

    @property
    def worker_memory_bytes(self) -> int:
        """Memory of one worker when every worker gets the same share (an existing cluster's)."""
        return self.memory_bytes // self.max_workers


def detect_gpus() -> tuple[int, str | None]:
    """GPUs visible through ``nvidia-smi``, with a reason when there are none."""
    if shutil.which("nvidia-smi") is None:
        return 0, "no GPU on this machine (nvidia-smi not found)"
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0, "nvidia-smi did not answer"
    count = sum(1 for line in listed.splitlines() if line.startswith("GPU "))
    return count, None if count else "nvidia-smi lists no GPU"


def local_resources(gpus: int | None = None) -> Resources:
    """This machine: one worker per core at most, 80% of its memory for the workers."""
    cores = host_cpus()
    if gpus is None:
        gpus, note = detect_gpus()
    else:
        note = None if gpus else "MLOPS_ALLOCATOR_GPUS is 0"
    return Resources(
        max_workers=cores,
        max_threads_per_worker=cores,
        memory_bytes=int(psutil.virtual_memory().total * 0.8),
        gpus=gpus,
        gpu_note=note,
    )


def cluster_resources(
    max_workers: int,
    threads_per_worker: int,
    memory_per_worker: str,
    gpus: int,
    backend: str = "scheduler",
) -> Resources:
    """A cluster's limits from settings (``MLOPS_ALLOCATOR_MAX_WORKERS``...): a KubeCluster's."""
    return Resources(
        max_workers=max_workers,
        max_threads_per_worker=threads_per_worker,
        memory_bytes=max_workers * parse_bytes(memory_per_worker),
        gpus=gpus,
        gpu_note=None if gpus else "the configured cluster has no GPU (MLOPS_ALLOCATOR_GPUS)",
        backend=backend,
        description=f"the {backend} cluster's limits (MLOPS_ALLOCATOR_MAX_WORKERS: {max_workers} "
        f"worker(s) x {threads_per_worker} thread(s), {memory_per_worker} each)",
    )


def existing_cluster_resources(
    address: str, workers: list[dict], max_workers: int | None = None
) -> Resources:
    """A running Dask cluster, from its scheduler's worker list (``scheduler_info()``).

    The run can be given any number of its workers; threads and memory per worker are the
    smallest worker's, so every selection fits. Workers started with ``--resources GPU=1``
    count as GPUs.

    Raises:
        ValueError: when the scheduler has no worker.
    """
    if not workers:
        raise ValueError(f"The Dask scheduler at {address} has no worker: start `dask worker`s.")
    threads = min(int(w["nthreads"]) for w in workers)
    memory = min(int(w.get("memory_limit") or psutil.virtual_memory().total) for w in workers)
    gpus = sum(1 for w in workers if (w.get("resources") or {}).get("GPU"))
    usable = min(len(workers), max_workers or len(workers))
    description = (
        f"the existing Dask cluster at {address} ({len(workers)} worker(s) x {threads} "
        f"thread(s), {format_bytes(memory)} each"
        + (
            f"; MLOPS_ALLOCATOR_MAX_WORKERS lets a run use {usable}"
            if usable < len(workers)
            else ""
        )
        + ")"
    )
    return Resources(
        max_workers=usable,
        max_threads_per_worker=threads,
        memory_bytes=usable * memory,
        gpus=gpus,
        gpu_note=None if gpus else "no worker of the cluster has a GPU resource",
        backend="scheduler",
        fixed_worker=True,
        description=description,
    )


def candidate_shapes(
    resources: Resources,
    max_workers: int | None = None,
    max_threads_per_worker: int | None = None,
    max_memory_per_worker: str | None = None,
    allow_gpu: bool = True,
) -> tuple[list[ClusterShape], list[str]]:
    """Every cluster shape that fits the resources and the use case's own limits.

    Returns:
        The shapes, and a note for each requested limit that had to be capped.
    """
    notes = []
    workers = resources.max_workers
    if max_workers is not None:
        if max_workers > resources.max_workers:
            notes.append(
                f"asked for up to {max_workers} workers; capped at {resources.max_workers}, "
                f"all the {resources.backend} cluster has"
            )
        workers = min(workers, max_workers)
    threads = resources.max_threads_per_worker
    if max_threads_per_worker is not None:
        if max_threads_per_worker > threads:
            notes.append(
                f"asked for up to {max_threads_per_worker} threads per worker; capped at {threads}"
            )
        threads = min(threads, max_threads_per_worker)
    memory_cap = resources.memory_bytes
    if max_memory_per_worker is not None:
        requested = parse_bytes(max_memory_per_worker)
        if requested > resources.memory_bytes:
            notes.append(
                f"asked for up to {max_memory_per_worker} per worker; capped at "
                f"{format_bytes(resources.memory_bytes)}, the memory available"
            )
        memory_cap = min(memory_cap, requested)
    if resources.fixed_worker:  # existing workers: choose how many, not their size
        if max_threads_per_worker is not None or max_memory_per_worker is not None:
            notes.append(
                "the use case's per-worker limits do not apply: the existing workers' threads "
                "and memory are fixed"
            )
        return [
            ClusterShape(
                workers=n,
                threads_per_worker=resources.max_threads_per_worker,
                memory_per_worker_bytes=resources.worker_memory_bytes,
                gpu=gpu,
            )
            for n in range(1, workers + 1)
            for gpu in ((False, True) if allow_gpu and n <= resources.gpus else (False,))
        ], notes
    shapes = []
    for n in range(1, workers + 1):
        for t in range(1, threads + 1):
            for gib in MEMORY_LADDER_GIB:
                memory = int(gib * GIB)
                if memory > memory_cap or n * memory > resources.memory_bytes:
                    break
                shapes.append(
                    ClusterShape(workers=n, threads_per_worker=t, memory_per_worker_bytes=memory)
                )
                if allow_gpu and n <= resources.gpus:
                    shapes.append(
                        ClusterShape(
                            workers=n,
                            threads_per_worker=t,
                            memory_per_worker_bytes=memory,
                            gpu=True,
                        )
                    )
    if not shapes:  # less memory than the smallest step: one worker with what there is
        shapes.append(
            ClusterShape(workers=1, threads_per_worker=1, memory_per_worker_bytes=memory_cap)
        )
        notes.append(f"only {format_bytes(memory_cap)} of memory available for the workers")
    return shapes, notes


DEFAULT_MAX_NODES = 16


def node_counts(
    nodes: list[int] | None = None, min_nodes: int = 1, max_nodes: int | None = None
) -> list[int]:
    """The node counts a cluster offers: an explicit list, or every count from min to max.

    Raises:
        ValueError: for a count under 1 or a minimum above the maximum.
    """
    if nodes:
        if min(nodes) < 1:
            raise ValueError(f"node counts must be 1 or more (got {sorted(nodes)})")
        return sorted(set(nodes))
    top = max_nodes or max(DEFAULT_MAX_NODES, min_nodes)
    if min_nodes < 1 or min_nodes > top:
        raise ValueError(f"min_nodes {min_nodes} must be between 1 and max_nodes {top}")
    return list(range(min_nodes, top + 1))


def machine_shapes(
    catalogue: Catalogue, machine_types: list[str], counts: list[int], allow_gpu: bool = True
) -> list[ClusterShape]:
    """Candidates as a cloud cluster offers them: node counts x machine types.

    Raises:
        CatalogueError: naming a machine type the catalogue does not know.
    """
    machines = [catalogue.get(name) for name in machine_types]
    return [
        machine.shape(n) for machine in machines if allow_gpu or machine.gpus == 0 for n in counts
    ]
