"""The project's ``prefect.yaml`` as the local stack reads it: its deployments and work pools."""

from __future__ import annotations

from pathlib import Path

import yaml


def project_deployments(project_dir: Path, prefect_file: str = "prefect.yaml") -> list[dict]:
    """The deployments a project's prefect file declares."""
    return yaml.safe_load((project_dir / prefect_file).read_text()).get("deployments", [])


def project_pools(project_dir: Path) -> list[str]:
    """The work pools the project's ``prefect.yaml`` deploys to, in order of first use."""
    return list(dict.fromkeys(d["work_pool"]["name"] for d in project_deployments(project_dir)))
