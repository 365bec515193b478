"""Check, before ``prefect deploy``, that every ``{{ $VAR }}`` a prefect file reads is set.

``prefect deploy`` leaves a placeholder whose variable is unset as literal text in the
deployment, where it only fails later, inside a worker. This check fails first, naming them::

    python -m prefect_mlops.infra.deploy_check prefect.production.yaml
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = re.compile(r"\{\{\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
MAY_BE_EMPTY = {"MLOPS_DASK_SCHEDULER_ADDRESS", "MLOPS_SERVING_URLS"}
"""Variables whose empty value means something: no scheduler -> a LocalCluster in the pod; no
serving instances -> the deploy stage checks the serving code in its own pod."""
ALWAYS_NEEDED = ["PREFECT_API_URL"]


def placeholders(text: str) -> list[str]:
    """The environment variables a prefect file's values read, in order of first use."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, str):
            found.extend(PLACEHOLDER.findall(node))
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(text))  # comments are not read
    return list(dict.fromkeys(found))


def missing_settings(text: str, env: Mapping[str, str]) -> list[str]:
    """The variables that are unset (or empty where empty means nothing)."""
    wanted = [*ALWAYS_NEEDED, *placeholders(text)]
    return [
        name
        for name in dict.fromkeys(wanted)
        if name not in env or (not env[name] and name not in MAY_BE_EMPTY)
    ]


def main(argv: list[str]) -> int:
    path = Path(argv[0] if argv else "prefect.yaml")
    missing = missing_settings(path.read_text(), os.environ)
    if missing:
        print(
            f"{path} needs these environment variables set before `prefect deploy`: "
            f"{', '.join(missing)} (see docs/operations.md).",
            file=sys.stderr,
        )
        return 1
    print(f"{path}: every variable it reads is set.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
