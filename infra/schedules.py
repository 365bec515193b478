"""Whether schedules fire: each scheduled deployment, its next run and the last one it started.

Prefect's scheduler creates a deployment's runs ahead of time (Scheduled); a worker of its pool
starts each when it is due. A schedule that is active but has no run waiting means the
scheduler is not creating runs (look in the Prefect server's log); a run still Scheduled past its
time turns Late, which means no worker took it. ``mlops status`` shows both.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterCreatedBy,
    FlowRunFilterDeploymentId,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import DeploymentSchedule, FlowRun, StateType
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule, RRuleSchedule
from prefect.client.schemas.sorting import FlowRunSort
from pydantic import BaseModel

SCHEDULER_GRACE = dt.timedelta(seconds=90)
"""A new schedule's runs may take the scheduler this long (its loop runs every 60 s)."""


class ScheduledRun(BaseModel):
    """A run a schedule created: when it was due and where it is now."""

    name: str
    state: str
    due: dt.datetime
    started: dt.datetime | None = None


class DeploymentSchedules(BaseModel):
    """One scheduled deployment as ``mlops status`` shows it."""

    deployment: str
    """``flow/deployment``."""
    schedules: list[str]
    """Each schedule in words, ``(paused)`` when switched off."""
    expects_runs: bool
    """An active schedule of a deployment that is not paused, older than SCHEDULER_GRACE,
    still has times ahead."""
    next_run: ScheduledRun | None = None
    last_run: ScheduledRun | None = None
    """The last run a schedule created that has left Scheduled (started, or cancelled)."""

    @property
    def firing(self) -> bool:
        """False when runs are expected and the scheduler created none."""
        return self.next_run is not None or not self.expects_runs


def describe_schedule(schedule: DeploymentSchedule) -> str:
    """A schedule in words: ``cron '0 3 * * *' (UTC)``, ``every 1800 s``, ``rrule ...``."""
    rule = schedule.schedule
    if isinstance(rule, CronSchedule):
        text = f"cron '{rule.cron}' ({rule.timezone or 'UTC'})"
    elif isinstance(rule, IntervalSchedule):
        text = f"every {rule.interval.total_seconds():g} s"
    elif isinstance(rule, RRuleSchedule):
        text = f"rrule '{rule.rrule.replace(chr(10), ' ')}' ({rule.timezone or 'UTC'})"
    else:
        text = type(rule).__name__
    return text if schedule.active else f"{text} (paused)"


def expects_runs(schedule: DeploymentSchedule, now: dt.datetime) -> bool:
    """Whether the scheduler should have created runs of this schedule by ``now``."""
    settled = schedule.created is None or now - schedule.created > SCHEDULER_GRACE
    return settled and has_times_ahead(schedule, now)


def has_times_ahead(schedule: DeploymentSchedule, now: dt.datetime) -> bool:
    """Whether an active schedule will still fire: a cron or an interval always; an rrule maybe."""
    rule = schedule.schedule
    if not schedule.active:
        return False
    if not isinstance(rule, RRuleSchedule):
        return True
    local_now = now.astimezone(ZoneInfo(rule.timezone or "UTC"))
    parsed = rrulestr(rule.rrule)
    try:
        return parsed.after(local_now) is not None
    except TypeError:  # a rule with a naive DTSTART compares with naive times
        return parsed.after(local_now.replace(tzinfo=None)) is not None


def read_schedules(client: SyncPrefectClient) -> list[DeploymentSchedules]:
    """Every deployment that has a schedule, by name, with its next and last scheduled run."""
    now = dt.datetime.now(dt.UTC)
    found = []
    for deployment in client.read_deployments():
        if not deployment.schedules:
            continue
        flow = client.read_flow(deployment.flow_id)
        found.append(
            DeploymentSchedules(
                deployment=f"{flow.name}/{deployment.name}",
                schedules=[describe_schedule(s) for s in deployment.schedules],
                expects_runs=not deployment.paused
                and any(expects_runs(s, now) for s in deployment.schedules),
                next_run=_scheduled_run(client, deployment.id, waiting=True),
                last_run=_scheduled_run(client, deployment.id, waiting=False),
            )
        )
    return sorted(found, key=lambda d: d.deployment)


def _scheduled_run(
    client: SyncPrefectClient, deployment_id: Any, waiting: bool
) -> ScheduledRun | None:
    """The first run still waiting (Scheduled or Late), or the last one that left that state."""
    state = (
        FlowRunFilterStateType(any_=[StateType.SCHEDULED])
        if waiting
        else FlowRunFilterStateType(not_any_=[StateType.SCHEDULED])
    )
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
            created_by=FlowRunFilterCreatedBy(type_=["SCHEDULE"]),
            state=FlowRunFilterState(type=state),
        ),
        sort=FlowRunSort.EXPECTED_START_TIME_ASC
        if waiting
        else FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=1,
    )
    return _as_scheduled_run(runs[0]) if runs else None


def _as_scheduled_run(run: FlowRun) -> ScheduledRun:
    return ScheduledRun(
        name=run.name,
        state=run.state.name if run.state else "Unknown",
        due=(run.expected_start_time or run.created).astimezone(dt.UTC),
        started=run.start_time.astimezone(dt.UTC) if run.start_time else None,
    )
