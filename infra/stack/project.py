"""The project deployed to the local stack: its ``prefect.yaml``, work pools and deployments."""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from prefect_mlops.infra.stack.components import base_env, prefect_api
from prefect_mlops.infra.stack.prefect_file import project_deployments
from prefect_mlops.infra.stack.processes import console_script
from prefect_mlops.infra.stack.state import StackError, StackState, stack_dir, write_state


def find_project_dir(explicit: Path | None = None) -> Path:
    """The directory holding ``prefect.yaml``: given, the working directory, or this checkout.

    Raises:
        StackError: if none of them has a ``prefect.yaml``.
    """
    candidates = [explicit] if explicit else [Path.cwd(), Path(__file__).resolve().parents[2]]
    for candidate in candidates:
        if candidate is not None and (candidate / "prefect.yaml").is_file():
            return candidate.resolve()
    raise StackError(
        f"No prefect.yaml in {', '.join(str(c) for c in candidates if c)}. Run this from the "
        "project's root or pass --project-dir."
    )


def prepare_prefect(
    state: StackState, pools: list[str], redeploy: bool, say: Callable[[str], None]
) -> None:
    """Work pools, the crash-detection automation and the project's deployments.

    The project is deployed again only when ``prefect.yaml`` or ``flows/`` changed since the
    last deploy (or ``redeploy``): deploying resets schedules, so a schedule paused in the UI
    stays paused across ``mlops up``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from prefect_mlops.infra.crash_detection import SILENCE, ensure_crash_detection

    with prefect_api(state), get_client(sync_client=True) as client:
        template = ProcessWorker.get_default_base_job_template()
        for pool in pools:
            with suppress(ObjectAlreadyExists):
                client.create_work_pool(
                    WorkPoolCreate(name=pool, type="process", base_job_template=template)
                )
        say(f"  {'work pools (process)':<26} {', '.join(pools)}")
        created = ensure_crash_detection(client)
        note = "created" if created else "present"
        say(
            f"  {'crash detection':<26} automation {note}: a run silent for "
            f"{SILENCE.total_seconds():.0f} s is marked Crashed"
        )
        current = deployment_fingerprint(Path(state.project_dir))
        if state.deployed == current and not redeploy and _deployments_exist(client, state):
            say(
                f"  {'deployments':<26} unchanged since deployed (prefect.yaml, flows/); "
                "schedules keep their state (--redeploy to deploy again)"
            )
            return
    count = deploy_project(state)
    state.deployed = current
    write_state(state)
    say(f"  {'deployments':<26} {count} deployed from prefect.yaml (prefect deploy --all)")


def deployment_fingerprint(project_dir: Path) -> str:
    """A hash of what a deployment is made of: prefect.yaml and the flows' signatures' files."""
    digest = hashlib.sha256()
    for path in [project_dir / "prefect.yaml", *sorted((project_dir / "flows").glob("*.py"))]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _deployments_exist(client: Any, state: StackState) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        for deployment in project_deployments(Path(state.project_dir)):
            client.read_deployment_by_name(f"{deployment['name']}/{deployment['name']}")
    except ObjectNotFound:
        return False
    return True


def deploy_project(state: StackState, prefect_file: str = "prefect.yaml") -> int:
    """Run ``prefect deploy --all`` from the project against the stack. Returns the count.

    Raises:
        StackError: with the command's output if it fails.
    """
    log = stack_dir(Path(state.home)) / "logs" / "deploy.log"
    env = base_env(state)
    env.pop("MLOPS_PROJECT_DIR")  # resolved by each worker at run time, not baked in
    command = [
        console_script("prefect"),
        "deploy",
        "--all",
        "--no-prompt",
        "--prefect-file",
        prefect_file,
    ]
    done = subprocess.run(
        command, cwd=state.project_dir, env=env, capture_output=True, text=True, timeout=600
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise StackError(f"`{' '.join(command)}` failed (exit {done.returncode}):\n{tail}")
    return len(project_deployments(Path(state.project_dir), prefect_file))
