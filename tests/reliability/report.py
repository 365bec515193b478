"""Write ``docs/reliability.md`` from the figures the reliability suite recorded.

Run by ``make reliability`` after the suite: ``python -m tests.reliability.report``. The page's
opening and the notes under each area come from ``tests/reliability/notes.md``; the tables come
only from what the scenarios measured (``test-artifacts/reliability/*.json``).
"""

from __future__ import annotations

import sys
from itertools import groupby
from pathlib import Path

from tests.reliability.figures import FIGURES_DIR, ROOT, Scenario, load_scenarios

DOC = ROOT / "docs" / "reliability.md"
NOTES = Path(__file__).with_name("notes.md")
AREAS = ("orchestration", "pipeline", "registry", "serving", "security")


def render(scenarios: list[Scenario], notes: str) -> str:
    """The page: the notes' opening, then one table per area."""
    intro, _, per_area = notes.partition("\n## ")
    area_notes = _area_notes("## " + per_area if per_area else "")
    machines = sorted({s.machine for s in scenarios})
    stamps = sorted(s.recorded_at for s in scenarios)
    lines = [
        intro.rstrip(),
        "",
        f"Measured on {', '.join(machines)}; recorded {stamps[0]} to {stamps[-1]} "
        f"by `make reliability` ({len(scenarios)} scenarios, "
        f"{sum(s.held for s in scenarios)} held).",
        "",
    ]
    ordered = sorted(scenarios, key=lambda s: (_area_rank(s.area), s.name))
    areas = {s.area for s in scenarios}
    for area, group in groupby(ordered, key=lambda s: s.area):
        lines += [f"## {area.capitalize()}", ""]
        if area in area_notes:
            lines += [area_notes[area].strip(), ""]
        lines += [
            "| scenario | injected | held | what happened | figures |",
            "|---|---|---|---|---|",
        ]
        for scenario in group:
            lines.append(
                f"| {_cell(scenario.name)} | {_cell(scenario.injected)} | "
                f"{'yes' if scenario.held else '**no**'} | {_cell(scenario.outcome)} | "
                f"{_cell(_figures(scenario.numbers))} |"
            )
        lines.append("")
    for title, body in area_notes.items():  # sections that are no area: "Not tested here"
        if title not in areas:
            lines += [f"## {title[0].upper()}{title[1:]}", "", body.strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _area_rank(area: str) -> tuple[int, str]:
    return (AREAS.index(area) if area in AREAS else len(AREAS), area)


def _area_notes(text: str) -> dict[str, str]:
    notes = {}
    for block in text.split("\n## ")[0:]:
        title, _, body = block.removeprefix("## ").partition("\n")
        if title.strip():
            notes[title.strip().lower()] = body
    return notes


def _figures(numbers: dict) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in numbers.items())


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main() -> int:
    """Write the page; exit 1 if nothing was recorded."""
    scenarios = load_scenarios()
    if not scenarios:
        print(f"No figures under {FIGURES_DIR}: run the suite first (make reliability).")
        return 1
    DOC.write_text(render(scenarios, NOTES.read_text()))
    held = sum(s.held for s in scenarios)
    print(f"Wrote {DOC.relative_to(ROOT)}: {len(scenarios)} scenarios, {held} held.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
