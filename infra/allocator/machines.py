"""Machine types and their prices: what a cluster is built from and what an hour of it costs.

A :class:`Catalogue` maps a machine type's name to its size (vCPUs, memory, GPUs) and its
price per node-hour. The allocator uses it three ways: an imported run that names a machine
type gets its threads and memory from it (unknown names are refused), candidates are built
as node counts of machine types, and a run's cost is node-hours x price.

The built-in catalogue lists the machine types of the public logs the benchmark replays (the
EC2 types of Scout and GBM-perf) at AWS's published on-demand Linux prices for us-east-1, and
the GPU clouds GBM-perf used at their list prices; prices change, so a team sets its own with
``MLOPS_ALLOCATOR_MACHINES`` (a CSV or YAML file with the columns of :class:`Machine`), which
extends and overrides the built-in entries.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefect_mlops.mlops.errors import MlopsError

from .history import ClusterShape

GIB = 2**30


class CatalogueError(MlopsError):
    """A machine type is unknown or a catalogue file is invalid."""


class Machine(BaseModel):
    """One machine type: its size and its price per node-hour."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    vcpus: int = Field(ge=1)
    memory_gib: float = Field(gt=0)
    gpus: int = Field(default=0, ge=0)
    price_per_hour: float = Field(gt=0, description="One node for one hour, in your currency.")

    @property
    def memory_bytes(self) -> int:
        """Memory of one node in bytes."""
        return int(self.memory_gib * GIB)

    def shape(self, nodes: int, gpu: bool | None = None) -> ClusterShape:
        """A cluster of ``nodes`` of this type (one worker per node, all its vCPUs and memory)."""
        return ClusterShape(
            workers=nodes,
            threads_per_worker=self.vcpus,
            memory_per_worker_bytes=self.memory_bytes,
            gpu=self.gpus > 0 if gpu is None else gpu,
            machine_type=self.name,
        )


# name, vCPUs, memory GiB, GPUs, USD per hour (AWS on-demand, us-east-1, Linux; list prices)
_BUILT_IN = (
    ("c4.large", 2, 3.75, 0, 0.10),
    ("c4.xlarge", 4, 7.5, 0, 0.199),
    ("c4.2xlarge", 8, 15.0, 0, 0.398),
    ("m4.large", 2, 8.0, 0, 0.10),
    ("m4.xlarge", 4, 16.0, 0, 0.20),
    ("m4.2xlarge", 8, 32.0, 0, 0.40),
    ("r4.large", 2, 15.25, 0, 0.133),
    ("r4.xlarge", 4, 30.5, 0, 0.266),
    ("r4.2xlarge", 8, 61.0, 0, 0.532),
    ("r4.8xlarge", 32, 244.0, 0, 2.128),
    ("r4.16xlarge", 64, 488.0, 0, 4.256),
    ("m5.12xlarge", 48, 192.0, 0, 2.304),
    ("m7i.8xlarge", 32, 128.0, 0, 1.6128),
    ("p3.2xlarge", 8, 61.0, 1, 3.06),
    ("g5.4xlarge", 16, 64.0, 1, 1.624),
    ("g6.4xlarge", 16, 64.0, 1, 1.3232),
    ("lambdalabs gpu_1x_a10", 30, 200.0, 1, 0.75),
    ("lambdalabs gpu_1x_a100_sxm4", 30, 200.0, 1, 1.29),
    ("lambdalabs gpu_1x_h100_pcie", 26, 200.0, 1, 2.49),
)


class Catalogue:
    """Machine types by name."""

    def __init__(self, machines: Iterable[Machine]) -> None:
        self.machines = {m.name: m for m in machines}

    def __contains__(self, name: object) -> bool:
        return name in self.machines

    def get(self, name: str) -> Machine:
        """The machine type called ``name``.

        Raises:
            CatalogueError: naming the known types when ``name`` is not one of them.
        """
        try:
            return self.machines[name]
        except KeyError:
            known = ", ".join(sorted(self.machines))
            raise CatalogueError(
                f"Unknown machine type '{name}'. Known: {known}. Add it to the file named by "
                "MLOPS_ALLOCATOR_MACHINES (docs/allocator.md)."
            ) from None

    def shape(self, name: str, nodes: int, gpu: bool | None = None) -> ClusterShape:
        """A cluster of ``nodes`` machines of type ``name``."""
        return self.get(name).shape(nodes, gpu)

    def price_per_second(self, shape: ClusterShape) -> float | None:
        """What the whole cluster costs per second, or None when it has no machine type."""
        if shape.machine_type is None:
            return None
        return shape.workers * self.get(shape.machine_type).price_per_hour / 3600

    @property
    def fingerprint(self) -> tuple:
        """The names and prices, to tell two catalogues apart."""
        return tuple(sorted((m.name, m.price_per_hour) for m in self.machines.values()))

    def merged(self, other: Catalogue) -> Catalogue:
        """This catalogue with ``other``'s entries added and overriding."""
        return Catalogue([*self.machines.values(), *other.machines.values()])


def default_catalogue() -> Catalogue:
    """The built-in machine types (see the module docstring for where the prices come from)."""
    return Catalogue(
        Machine(name=n, vcpus=v, memory_gib=m, gpus=g, price_per_hour=p)
        for n, v, m, g, p in _BUILT_IN
    )


def load_catalogue(path: Path) -> Catalogue:
    """Read machine types from a CSV (header ``name,vcpus,memory_gib,gpus,price_per_hour``) or a
    YAML list of mappings with those keys.

    Raises:
        CatalogueError: naming the file, the entry and the field that is wrong.
    """
    if not path.is_file():
        raise CatalogueError(f"Machine catalogue not found: {path}")
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as handle:
            entries = [
                {k: v for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(handle)
            ]
    else:
        try:
            entries = yaml.safe_load(path.read_text()) or []
        except yaml.YAMLError as error:
            raise CatalogueError(f"{path} is not valid YAML: {error}") from None
        if isinstance(entries, dict):
            entries = entries.get("machines", [])
        if not isinstance(entries, list):
            raise CatalogueError(f"{path}: expected a list of machine types.")
    machines = []
    for number, entry in enumerate(entries, 1):
        try:
            machines.append(Machine.model_validate(entry))
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "(entry)"
            raise CatalogueError(
                f"{path}, entry {number}: field '{field}' {first['msg'].lower()}"
            ) from None
    return Catalogue(machines)


def catalogue_for(path: str | Path | None) -> Catalogue:
    """The built-in catalogue, extended by the file at ``path`` when one is set."""
    base = default_catalogue()
    return base.merged(load_catalogue(Path(path))) if path else base
