"""The deploy stage's work: make the gated candidate champion, put it live, check it, or roll back.

Going live means every serving instance (``MLOPS_SERVING_URLS``) is told to reload and must
then answer with the new version; the smoke test sends held-out test rows and requires the
registry model's predictions (its files loaded natively, on the same rows) and a p95
single-row latency within the use case's budget. With no instance configured, the same check
runs on the serving code in this process. Any failure rolls ``champion`` back to the version
before (compare-and-set) and tells the instances to reload again. Every promotion and rollback
of a model takes the lock :func:`promotion_lock` names.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import httpx
import numpy as np
import pandas as pd
from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from prefect_mlops.infra.locks import exclusive, lock_name
from prefect_mlops.mlops.config import DeployConfig, PipelineConfig
from prefect_mlops.mlops.dataset import DatasetRef, read_split
from prefect_mlops.mlops.gates import artifact_key
from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry import promotion as registry_promotion
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.loading import model_check_limits
from prefect_mlops.model_registry.promotion import Promotion, roll_back_promotion
from prefect_mlops.model_registry.registry import RegisteredVersion
from prefect_mlops.serving.client import (
    InstanceError,
    replica_urls,
    request_reload,
    score,
    served_model,
)
from prefect_mlops.serving.loader import ServedModel, load_served_model
from prefect_mlops.serving.payload import Rows
from prefect_mlops.tasks.tracking import experiment_for, lineage_tags

logger = logging.getLogger(__name__)

IN_PROCESS = "in-process"
"""The smoke test's target when no serving instance is configured."""


class SmokeCheck(BaseModel):
    """The smoke test on one target: a serving instance's URL, or the serving code in-process."""

    target: str
    passed: bool
    detail: str
    served_version: str | None = None
    rows: int = 0
    max_difference: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


class GoLive(BaseModel):
    """What happened when the new champion was put live: reloads, then smoke checks."""

    passed: bool
    reason: str
    reloads: dict[str, str]
    checks: list[SmokeCheck]
    instances: list[str] = []
    """The serving instances of this model that were reloaded and checked."""


class DeployResult(BaseModel):
    """The deploy stage's outcome, and the aliases afterwards."""

    model_name: str
    version: str
    verdict: Literal["deployed", "rolled-back"]
    champion_version: str | None
    previous_version: str | None
    reason: str
    instances: list[str]
    reloads: dict[str, str]
    checks: list[SmokeCheck]

    def summary(self) -> str:
        """One line for the CLI: where it is live and what the smoke test measured."""
        if self.verdict == "rolled-back":
            return f"ROLLED BACK: {self.reason}"
        worst = max((c.latency_p95_ms or 0.0) for c in self.checks) if self.checks else 0.0
        where = (
            f"live on {len(self.instances)} serving instance(s)"
            if self.instances
            else "no serving instance of this model in MLOPS_SERVING_URLS; checked in-process"
        )
        return f"{where}; smoke test passed (p95 {worst:.1f} ms)"


# ---------------------------------------------------------------- comparing predictions


def compare_predictions(got: pd.DataFrame, expected: pd.DataFrame) -> tuple[bool, float, str]:
    """Whether two prediction frames agree: same columns, same labels, numbers within 1e-9.

    Returns:
        (agree, largest numeric difference, what differs first).
    """
    if list(got.columns) != list(expected.columns):
        return (
            False,
            float("nan"),
            f"columns {list(got.columns)}, expected {list(expected.columns)}",
        )
    if len(got) != len(expected):
        return False, float("nan"), f"{len(got)} rows, expected {len(expected)}"
    largest = 0.0
    for column in expected.columns:
        want, have = expected[column].reset_index(drop=True), got[column].reset_index(drop=True)
        if pd.api.types.is_numeric_dtype(want) and pd.api.types.is_numeric_dtype(have):
            gap = np.abs(have.to_numpy("float64") - want.to_numpy("float64"))
            largest = max(largest, float(np.nanmax(gap)) if gap.size else 0.0)
            if not np.allclose(have, want, rtol=1e-9, atol=1e-12, equal_nan=True):
                row = int(np.nanargmax(gap))
                return (
                    False,
                    largest,
                    f"'{column}' row {row}: {have[row]!r}, expected {want[row]!r}",
                )
        elif not (have.astype(str) == want.astype(str)).all():
            row = int(np.flatnonzero((have.astype(str) != want.astype(str)).to_numpy())[0])
            return False, largest, f"'{column}' row {row}: {have[row]!r}, expected {want[row]!r}"
    return True, largest, "predictions equal the registry model's"


def judge_smoke_test(
    target: str,
    served_version: str,
    predictions: pd.DataFrame,
    expected: pd.DataFrame,
    single_row_seconds: list[float],
    budget: DeployConfig,
) -> SmokeCheck:
    """The verdict on one target: its predictions equal the registry's and its p95 is in budget."""
    agree, largest, detail = compare_predictions(predictions, expected)
    p50, p95 = (float(np.percentile(single_row_seconds, q)) * 1000 for q in (50, 95))
    if agree and p95 > budget.max_latency_p95_ms:
        detail = (
            f"{target}: single-row p95 latency {p95:.1f} ms is over the budget of "
            f"{budget.max_latency_p95_ms:g} ms (deploy.max_latency_p95_ms)"
        )
    elif not agree:
        detail = f"{target}: {detail}"
    return SmokeCheck(
        target=target,
        passed=agree and p95 <= budget.max_latency_p95_ms,
        detail=detail,
        served_version=served_version,
        rows=len(predictions),
        max_difference=largest,
        latency_p50_ms=p50,
        latency_p95_ms=p95,
    )


# ---------------------------------------------------------------- the smoke test


def check_instance(
    url: str,
    rows: pd.DataFrame,
    expected: pd.DataFrame,
    version: str,
    budget: DeployConfig,
) -> SmokeCheck:
    """Smoke-test one serving instance: it serves ``version``, predicts as the registry, fast."""
    try:
        with httpx.Client(timeout=30) as client:
            scored = score(client, url, rows)
            if scored.version != version:
                return SmokeCheck(
                    target=url,
                    passed=False,
                    served_version=scored.version,
                    detail=f"{url} serves version {scored.version or '(none)'}, not {version}",
                )
            singles = [
                score(client, url, rows.iloc[[i % len(rows)]]).seconds
                for i in range(budget.latency_requests)
            ]
    except InstanceError as error:
        return SmokeCheck(target=url, passed=False, detail=str(error))
    return judge_smoke_test(url, scored.version, scored.predictions, expected, singles, budget)


def check_in_process(
    config: PipelineConfig,
    served: ServedModel,
    rows: pd.DataFrame,
    expected: pd.DataFrame,
) -> SmokeCheck:
    """The smoke test on the serving code itself, on the version loaded as a server loads it."""
    columns = {c: rows[c].tolist() for c in rows.columns}
    as_served = pd.DataFrame(served.predict_rows(Rows(columns, len(rows))))
    singles = []
    for i in range(config.deploy.latency_requests):
        one = rows.iloc[[i % len(rows)]]
        started = time.perf_counter()
        served.predict_rows(Rows({c: one[c].tolist() for c in one.columns}, 1))
        singles.append(time.perf_counter() - started)
    return judge_smoke_test(IN_PROCESS, served.version, as_served, expected, singles, config.deploy)


def held_out_rows(dataset: DatasetRef, count: int) -> pd.DataFrame:
    """The first ``count`` test-split rows, with the model's raw input columns."""
    columns = dataset.feature_spec.input_columns
    return read_split(dataset, "test", columns=columns).head(count).reset_index(drop=True)


def instances_of(model: str) -> list[str]:
    """The configured serving instances (``MLOPS_SERVING_URLS``) that serve ``model``.

    A host name with several addresses (a Kubernetes headless Service) stands for each of
    them, so every replica is reloaded and checked. An instance serving another model is left
    alone (one stack can serve several use cases); one that does not answer is kept, so the
    reload fails on it and the deploy rolls back.
    """
    kept = []
    urls = [replica for url in get_settings().serving_instances for replica in replica_urls(url)]
    for url in urls:
        name = served_model(url)
        if name is not None and name != model:
            logger.info("%s serves %s, not %s: not reloading it", url, name, model)
            continue
        kept.append(url)
    return kept


def reload_instances(urls: list[str], version: str, timeout_s: float) -> dict[str, str]:
    """Tell every instance to reload; each must end up serving ``version``.

    Returns:
        URL -> what it did (``swapped`` or ``unchanged``).

    Raises:
        InstanceError: naming the first instance that did not answer, refused, or did not
            load ``version`` (with the error it reported).
    """
    token = get_settings().serving_admin_token
    outcomes = {}
    for url in urls:
        answer = request_reload(url, token, timeout_s)
        if answer.status == "failed" or answer.version != version:
            raise InstanceError(
                f"{url} did not take version {version}: it {answer.status} and serves version "
                f"{answer.version}" + (f" ({answer.error})" if answer.error else "")
            )
        outcomes[url] = answer.status
    return outcomes


def reload_and_smoke_test(config: PipelineConfig, dataset: DatasetRef, version: str) -> GoLive:
    """Reload every instance onto ``version`` and smoke-test it; never raises for a failed check."""
    urls = instances_of(config.model.name)
    try:  # each instance loads and checks the version itself before it swaps
        reloads = reload_instances(urls, version, config.deploy.reload_timeout_s)
    except InstanceError as error:
        return GoLive(passed=False, reason=str(error), reloads={}, checks=[], instances=urls)
    rows = held_out_rows(dataset, config.deploy.smoke_rows)
    client, _ = experiment_for(config)
    uri, check = tracking.tracking_uri_for(config), model_check_limits(get_settings())
    served = load_served_model(client, f"{config.model.name}/{version}", uri, check)
    expected = served.predict(rows)  # the registry model's predictions, by its own files
    checks = [check_instance(url, rows, expected, version, config.deploy) for url in urls] or [
        check_in_process(config, served, rows, expected)
    ]
    failed = [c for c in checks if not c.passed]
    reason = "; ".join(c.detail for c in failed) or f"smoke test passed on {len(checks)} target(s)"
    return GoLive(passed=not failed, reason=reason, reloads=reloads, checks=checks, instances=urls)


def deploy_markdown(result: DeployResult) -> str:
    """The Prefect artifact: what went live where, and each smoke check."""
    lines = [
        f"# Deploy: {result.model_name} version {result.version} — **{result.verdict}**",
        "",
        f"{result.reason}",
        "",
        f"champion: {result.champion_version or 'none'}, previous: {result.previous_version or 'none'}",
        "",
        "| target | reload | served version | rows equal | max difference | p50 ms | p95 ms | verdict |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for check in result.checks:
        lines.append(
            f"| {check.target} | {result.reloads.get(check.target, '-')} | "
            f"{check.served_version or '-'} | {check.rows} | "
            f"{_number(check.max_difference, '.1e')} | {_number(check.latency_p50_ms, '.2f')} | "
            f"{_number(check.latency_p95_ms, '.2f')} | {'pass' if check.passed else 'FAIL: ' + check.detail} |"
        )
    return "\n".join(lines) + "\n"


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def promotion_lock(model_name: str):
    """The lock every promotion of ``model_name`` takes (a Prefect global concurrency limit)."""
    return lambda: exclusive(lock_name("mlops-promote", model_name))


# ---------------------------------------------------------------- the Prefect tasks


@task(name="promote-to-champion")
def promote_to_champion(
    config: PipelineConfig, candidate: RegisteredVersion, expected_champion: str | None
) -> Promotion:
    """Make the candidate champion (former champion -> previous), unless the champion moved."""
    client, _ = experiment_for(config)
    return registry_promotion.promote_to_champion(
        client, candidate.name, candidate.version, expected_champion, promotion_lock(candidate.name)
    )


@task(name="go-live")
def go_live(config: PipelineConfig, dataset: DatasetRef, candidate: RegisteredVersion) -> GoLive:
    """Reload the serving instances onto the candidate and smoke-test them."""
    experiment_for(config)  # points MLflow at the config's tracking store before loading models
    try:
        outcome = reload_and_smoke_test(config, dataset, candidate.version)
    except Exception as error:  # a check that cannot run is a failed check: roll back
        reason = f"The smoke test could not run: {type(error).__name__}: {error}"
        outcome = GoLive(passed=False, reason=reason, reloads={}, checks=[])
    (logger.info if outcome.passed else logger.error)(
        "Go-live of version %s: %s", candidate.version, outcome.reason
    )
    return outcome


@task(name="roll-back", retries=2, retry_delay_seconds=[2, 10])
def roll_back(config: PipelineConfig, promotion: Promotion, reason: str) -> str | None:
    """Put the former champion back and tell the instances to reload onto it."""
    client, _ = experiment_for(config)
    restored = roll_back_promotion(client, promotion, reason, promotion_lock(promotion.model_name))
    for url in instances_of(config.model.name):
        try:
            answer = request_reload(
                url, get_settings().serving_admin_token, config.deploy.reload_timeout_s
            )
            logger.warning(
                "After the rollback %s %s and serves version %s", url, answer.status, answer.version
            )
        except InstanceError as error:
            logger.error("After the rollback: %s", error)
    return restored


@task(name="record-deploy", retries=2, retry_delay_seconds=[2, 10])
def record_deploy(
    config: PipelineConfig,
    candidate: RegisteredVersion,
    promotion: Promotion,
    outcome: GoLive,
    restored: str | None,
    parent_run_id: str | None,
) -> DeployResult:
    """The outcome on the model version (``deploy.*`` tags), a ``deploy`` MLflow run and a Prefect artifact."""
    deployed = outcome.passed
    result = DeployResult(
        model_name=candidate.name,
        version=candidate.version,
        verdict="deployed" if deployed else "rolled-back",
        champion_version=candidate.version if deployed else restored,
        previous_version=promotion.previous_version if deployed else promotion.replaced_previous,
        reason=outcome.reason,
        instances=outcome.instances,
        reloads=outcome.reloads,
        checks=outcome.checks,
    )
    client, experiment_id = experiment_for(config)
    tags = {"deploy.verdict": result.verdict, "deploy.reason": result.reason[:5000]}
    for key, value in (
        tags | {"deploy.instances": ",".join(result.instances) or IN_PROCESS}
    ).items():
        client.set_model_version_tag(candidate.name, candidate.version, key, value)
    with tracking.stage_run(
        client, experiment_id, "deploy", parent_run_id, lineage_tags(config)
    ) as run:
        run_id = run.run_id
        tracking.log_params(
            client,
            run_id,
            {
                "model.name": candidate.name,
                "model.version": candidate.version,
                "instances": len(result.instances),
            },
        )
        metrics = {}
        for number, check in enumerate(result.checks):
            for name in ("latency_p50_ms", "latency_p95_ms", "max_difference"):
                value = getattr(check, name)
                if value is not None:
                    metrics[f"smoke_{number}_{name}"] = value
        tracking.log_metrics(client, run_id, metrics)
        tracking.set_tags(client, run_id, tags)
        markdown = deploy_markdown(result)
        client.log_text(run_id, markdown, "deployment.md")
        run.status = "FINISHED" if deployed else "FAILED"
    create_markdown_artifact(
        markdown=markdown,
        key=artifact_key("deployment", candidate.name),
        description=f"Deploy of {candidate.name} version {candidate.version}: {result.verdict}",
    )
    return result
