"""Writing a benchmark's results into its own marked section of ``docs/benchmarks.md``."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def markers(name: str) -> tuple[str, str]:
    """The begin and end comments around a benchmark's section, e.g. ``serving``."""
    return f"<!-- {name}-benchmark:begin -->", f"<!-- {name}-benchmark:end -->"


def write_section(name: str, heading: str, section: str, doc: Path = DOC) -> None:
    """Replace the text between ``name``'s markers, or append it under ``## heading``.

    ``section`` starts with the begin marker and ends with the end marker.
    """
    begin, end = markers(name)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + section + "\n"
    doc.write_text(text)
