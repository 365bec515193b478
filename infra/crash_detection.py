"""Crash detection for deployment runs whose process died without a word (killed, OOM, lost node).

A flow run started from a deployment sends a heartbeat event every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 in ``prefect.yaml``). A self-hosted Prefect
server does nothing when they stop, so the run would stay Running forever. This automation marks
such a run Crashed once no heartbeat (and no final state) has arrived for ``silence``; the
retraining pipeline, waiting on that stage, then fails with the stage named instead of hanging.
"""

from __future__ import annotations

from datetime import timedelta

from prefect.automations import AutomationCore
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

AUTOMATION_NAME = "mlops: crash silent flow runs"
HEARTBEAT_SECONDS = 30
"""The flow-run heartbeat interval that ``prefect.yaml`` sets for every deployment."""
SILENCE = timedelta(seconds=3 * HEARTBEAT_SECONDS)
"""A run is marked Crashed after this long without a heartbeat: three missed beats."""


def crash_silent_runs_automation(silence: timedelta = SILENCE) -> AutomationCore:
    """The automation: a heartbeat not followed by another heartbeat or a final state."""
    return AutomationCore(
        name=AUTOMATION_NAME,
        description=(
            f"Marks a flow run Crashed when its process stops sending heartbeats for "
            f"{silence.total_seconds():.0f} s (killed worker, out of memory, lost machine)."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
                "prefect.flow-run.Rejected",
                "prefect.flow-run.RolledBack",
                "prefect.flow-run.TimedOut",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=silence,
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=(
                    f"No heartbeat for {silence.total_seconds():.0f} s: the process running this "
                    "flow run died (worker killed, out of memory, or machine lost)."
                ),
            )
        ],
    )


def ensure_crash_detection(client: SyncPrefectClient, silence: timedelta = SILENCE) -> bool:
    """Create the automation unless one with its name exists. Returns whether it was created."""
    if client.read_automations_by_name(AUTOMATION_NAME):
        return False
    client.create_automation(crash_silent_runs_automation(silence))
    return True


def main() -> int:
    """Create the automation on the server ``PREFECT_API_URL`` names (production setup)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        created = ensure_crash_detection(client)
    print(f"Automation '{AUTOMATION_NAME}': {'created' if created else 'already present'}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
