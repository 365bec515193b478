"""Figures of the reliability suite: each scenario records what was injected, what held, the numbers.

A scenario calls ``figures.record(...)`` (the ``figures`` fixture) once it has measured; the
record is written at once as one JSON file under ``test-artifacts/reliability/``, so a run that
is stopped halfway keeps what it measured. ``python -m tests.reliability.report`` (run by
``make reliability``) turns the files into ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
FIGURES_DIR = ROOT / "test-artifacts" / "reliability"


@dataclass
class Scenario:
    """One failure injected and what the system did about it."""

    area: str
    """Where it belongs in the report: ``orchestration``, ``registry``, ``serving``, ..."""
    name: str
    injected: str
    """What was done to the system, in a sentence."""
    held: bool
    """Whether the system behaved as it must (the test also asserts it)."""
    outcome: str
    """What happened, in a sentence."""
    numbers: dict[str, float | int | str] = field(default_factory=dict)
    test: str = ""
    recorded_at: str = ""
    machine: str = ""


def machine() -> str:
    """Cores and memory of this machine, for the report's header."""
    memory = psutil.virtual_memory().total / 2**30
    return f"{psutil.cpu_count()} cores, {memory:.0f} GiB, {platform.system()} {platform.machine()}"


class Figures:
    """Writes one JSON file per recorded scenario."""

    def __init__(self, test: str, folder: Path = FIGURES_DIR) -> None:
        self.test = test
        self.folder = folder
        self.recorded: list[Scenario] = []

    def record(
        self,
        area: str,
        name: str,
        injected: str,
        held: bool,
        outcome: str,
        **numbers: float | int | str,
    ) -> Scenario:
        """Keep one scenario's figures; returns what was written."""
        scenario = Scenario(
            area=area,
            name=name,
            injected=injected,
            held=held,
            outcome=outcome,
            numbers=numbers,
            test=self.test,
            recorded_at=time.strftime("%Y-%m-%d %H:%M:%S"),
            machine=machine(),
        )
        self._write(scenario)
        self.recorded.append(scenario)
        return scenario

    def failed(self, message: str) -> None:
        """The test failed: what it recorded did not hold (or, if nothing, a row saying so)."""
        first_line = message.strip().splitlines()[0][:300] if message.strip() else "failed"
        scenarios = self.recorded or [
            Scenario(
                area="unrecorded",
                name=self.test.split("::")[-1],
                injected="",
                held=False,
                outcome="",
            )
        ]
        for scenario in scenarios:
            scenario.held = False
            scenario.outcome = f"FAILED: {first_line}"
            scenario.test = self.test
            scenario.recorded_at = time.strftime("%Y-%m-%d %H:%M:%S")
            scenario.machine = machine()
            self._write(scenario)

    def _write(self, scenario: Scenario) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{scenario.area}-{scenario.name}".lower())
        (self.folder / f"{slug.strip('-')[:120]}.json").write_text(
            json.dumps(asdict(scenario), indent=2)
        )


def load_scenarios(folder: Path = FIGURES_DIR) -> list[Scenario]:
    """Every recorded scenario, by area and then name."""
    found = [Scenario(**json.loads(p.read_text())) for p in sorted(folder.glob("*.json"))]
    return sorted(found, key=lambda s: (s.area, s.name))
