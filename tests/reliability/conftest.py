"""The reliability suite: faults injected into real components, with the figures recorded.

Every test here is marked ``reliability`` (as are failure scenarios elsewhere in the suite);
``make reliability`` runs them all and regenerates ``docs/reliability.md`` from their figures
(the ``figures`` fixture, in ``tests.fixtures``). Those marked ``long`` take minutes and run
only there; the rest run in ``make test`` too. A scenario that runs flows in this process asks
for ``prefect_api`` (the session's Prefect test server), as ``served_registry`` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
