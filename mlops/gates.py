"""The gate ledger: every check of the data gate and the model gate, with value, threshold, verdict.

Both gates produce :class:`GateCheck` records; :class:`GateLedger` collects them for one
candidate and renders them the same way everywhere (Prefect markdown artifact, MLflow tags,
the CLI), so whoever looks at either UI reads why a model was or wasn't promoted. These are the
records the gates share; the gates themselves are :mod:`tasks.data_gate` and
:mod:`tasks.model_gate`, their checks :mod:`tasks.data_gate_checks` and
:mod:`tasks.model_gate_checks`.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, Field

Verdict = Literal["pass", "fail", "skip"]
GateName = Literal["data", "model"]
Unit = Literal["", "share", "ms", "MB"]

HIGHER_IS_BETTER = frozenset(
    {"accuracy", "precision", "recall", "f1", "roc_auc", "average_precision", "r2"}
)
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
KNOWN_METRICS = HIGHER_IS_BETTER | LOWER_IS_BETTER


class GateCheck(BaseModel):
    """One check of a gate: what was measured, what was allowed, and the verdict."""

    gate: GateName
    name: str = Field(
        description="Stable id, e.g. 'column.amount.range' or 'metric.roc_auc.floor'."
    )
    description: str = Field(description="What the check asks, in words.")
    value: float | str | None = Field(default=None, description="What was observed.")
    unit: Unit = Field(default="", description="How to read the value ('share' = fraction).")
    threshold: str = Field(default="", description="What was allowed, in words.")
    verdict: Verdict
    detail: str = Field(default="", description="Why it failed or was skipped; sample rows.")

    @property
    def tag_key(self) -> str:
        """MLflow tag/metric key: ``gate.<gate>.<name>`` with only MLflow-safe characters."""
        return f"gate.{self.gate}." + re.sub(r"[^A-Za-z0-9_.\-/ ]", "_", self.name)[:200]

    def summary(self) -> str:
        """One line: verdict, value and threshold."""
        parts = [self.verdict]
        if self.value is not None:
            parts.append(f"value {format_value(self.value, self.unit)}")
        if self.threshold:
            parts.append(f"allowed {self.threshold}")
        if self.detail and self.verdict != "pass":
            parts.append(self.detail)
        return " | ".join(parts)


class DataGateResult(BaseModel):
    """What the data gate decided about one dataset version."""

    passed: bool
    dataset_version: str
    reference_version: str
    reference_origin: str = Field(description="Whose data the suite was derived from.")
    suite_name: str
    suite_uri: str
    report_uri: str
    data_docs_uri: str | None = None
    rows_validated: int
    rows_total: int
    checks: list[GateCheck]
    mlflow_run_id: str | None = None

    @property
    def failures(self) -> list[GateCheck]:
        """The checks that failed, in suite order."""
        return [c for c in self.checks if c.verdict == "fail"]


class GateLedger(BaseModel):
    """Every check of both gates for one candidate model version, and the decision."""

    model_name: str
    candidate_version: str
    candidate_run_id: str
    champion_version: str | None
    primary_metric: str
    checks: list[GateCheck]
    candidate_metrics: dict[str, float] = Field(
        default_factory=dict,
        description="The candidate's test metrics: a binary model's label metrics at its "
        "decision threshold (f1) and at 0.5 (f1_at_0.5).",
    )
    champion_metrics: dict[str, float] | None = Field(
        default=None, description="The champion's, on the same rows, at its own threshold."
    )

    @property
    def passed(self) -> bool:
        """True when no check failed (skipped checks do not block)."""
        return not self.failures

    @property
    def failures(self) -> list[GateCheck]:
        """The checks that failed."""
        return [c for c in self.checks if c.verdict == "fail"]

    @property
    def verdict(self) -> str:
        """``passed`` or ``rejected``."""
        return "passed" if self.passed else "rejected"

    def reason(self) -> str:
        """Why the candidate was rejected (or that it passed), in one paragraph."""
        if self.passed:
            counted = sum(c.verdict == "pass" for c in self.checks)
            return f"all {counted} applicable checks passed"
        return "; ".join(f"{c.description}: {c.summary()}" for c in self.failures)


def format_value(value: float | str | None, unit: Unit = "") -> str:
    """A compact, readable rendering of a measured value."""
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if not math.isfinite(value):
        return str(value)
    if unit == "share":
        return f"{100 * value:.3g}%"
    if unit in ("ms", "MB"):
        return f"{value:.3g} {unit}"
    if float(value).is_integer() and abs(value) < 1e12:
        return f"{value:,.0f}"
    if abs(value) >= 1e6 or abs(value) < 1e-3:
        return f"{value:.4g}"
    return f"{value:,.4f}".rstrip("0")


_ICON = {"pass": "✅ pass", "fail": "❌ fail", "skip": "⏭ skip"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def checks_table(checks: list[GateCheck]) -> str:
    """A markdown table of checks: gate, check, value, allowed, verdict, detail."""
    lines = [
        "| gate | check | value | allowed | verdict | detail |",
        "|---|---|---:|---|---|---|",
    ]
    for check in checks:
        lines.append(
            "| "
            + " | ".join(
                _cell(part)
                for part in (
                    check.gate,
                    check.description,
                    format_value(check.value, check.unit),
                    check.threshold,
                    _ICON[check.verdict],
                    check.detail if check.verdict != "pass" else "",
                )
            )
            + " |"
        )
    return "\n".join(lines)


def ledger_markdown(ledger: GateLedger) -> str:
    """The ledger as a markdown document: decision first, then every check."""
    champion = f"version {ledger.champion_version}" if ledger.champion_version else "none yet"
    head = (
        f"# Gate ledger: {ledger.model_name} version {ledger.candidate_version}\n\n"
        f"**Decision: {ledger.verdict.upper()}** "
        f"(champion before the gate: {champion}; primary metric `{ledger.primary_metric}`)\n\n"
    )
    if not ledger.passed:
        head += "Failed checks:\n\n" + "\n".join(
            f"- **{c.description}**: {c.summary()}" for c in ledger.failures
        )
        head += "\n\n"
    counts = {v: sum(c.verdict == v for c in ledger.checks) for v in ("pass", "fail", "skip")}
    head += f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped.\n\n"
    return head + checks_table(ledger.checks) + "\n" + metrics_table(ledger)


def metrics_table(ledger: GateLedger) -> str:
    """The test metrics behind the checks, candidate beside champion (empty without any)."""
    if not ledger.candidate_metrics:
        return ""
    champion = ledger.champion_metrics or {}
    lines = [
        "",
        "Test metrics (a binary model's labels at its own decision threshold, and at 0.5):",
        "",
        "| metric | candidate | champion |",
        "|---|---:|---:|",
    ]
    for name, value in sorted(ledger.candidate_metrics.items()):
        theirs = format_value(champion[name]) if name in champion else "n/a"
        lines.append(f"| {name} | {format_value(value)} | {theirs} |")
    return "\n".join(lines) + "\n"


def artifact_key(prefix: str, name: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    return f"{prefix}-{slug}"[:100]
