"""The serving benchmark's section of ``docs/benchmarks.md``: our service against MLflow's per
model family, and what the inference log and the access log cost (``benchmarks/serving.py``
measures them)."""

from __future__ import annotations

import os
import platform

import numpy as np

from benchmarks.doc_sections import markers

BEGIN, END = markers("serving")
NO_LOG = "ours-no-log"
"""Our server with both logs off: the baseline of the inference log's cost."""
NO_ACCESS_LOG = "ours-no-access-log"
"""Our server with the access log off (the inference log on): the baseline of its cost."""


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([run[key] for run in runs]))


def _ratios(
    r: dict, kind: str, key: str, invert: bool = False, base: str = "mlflow", top: str = "ours"
) -> list[float]:
    pairs = zip(r[kind][top], r[kind][base], strict=True)
    return [(m[key] / o[key]) if invert else (o[key] / m[key]) for o, m in pairs]


def report(r: dict) -> str:
    """The section of ``docs/benchmarks.md``: the comparison per family, then the log's cost."""
    first = next(iter(r["families"].values()))
    lines = [
        BEGIN,
        f"Measured on {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"by `python benchmarks/serving.py`: {first['rounds']} rounds of {r['seconds']:.0f} s per measurement, the two "
        "servers taking turns to go first. Both run one worker process on loopback and serve the same "
        "registered fraud model version (one trained by each model family, `mlops run --family`); the "
        "load generator shares the 2 cores. Figures are medians over the rounds; ratios are ours over "
        "MLflow's, median (lowest to highest round).",
        "",
    ]
    for family, measured in r["families"].items():
        lines += family_lines(
            FAMILY_NAMES.get(family, family), measured | {"concurrency": r["concurrency"]}
        )
    return "\n".join([*lines, *log_cost_lines(r), END])


FAMILY_NAMES = {"lightgbm": "LightGBM", "xgboost": "XGBoost"}


def family_lines(name: str, r: dict) -> list[str]:
    """Our server against MLflow's on one family's model."""
    s, o, b = r["single"], r["open"], r["batch"]
    single = _ratios(r, "single", "throughput")
    p99 = _ratios(r, "open", "p99_ms")
    batch = _ratios(r, "batch", "throughput")

    def cell(ratios: list[float], digits: int = 1) -> str:
        return f"{np.median(ratios):.{digits}f}x ({min(ratios):.{digits}f} to {max(ratios):.{digits}f})"

    def met(ratios: list[float], ok) -> str:
        return "yes" if ok(float(np.median(ratios))) else "**no**"

    errors = {
        name: sum(run["errors"] for kind in ("single", "batch", "open") for run in r[kind][name])
        for name in ("mlflow", "ours")
    }
    return [
        f"**{name} model.** Predictions on the same 200 rows: labels identical: **{r['same_labels']}**, largest "
        f"probability difference {r['max_probability_diff']:.1e}.",
        "",
        "| | `mlflow models serve` | `mlops serve` | ratio | target | met |",
        "|---|---:|---:|---:|---|---|",
        f"| single-row throughput, {r['concurrency']} connections (req/s) | {_median(s['mlflow'], 'throughput'):.0f} | "
        f"{_median(s['ours'], 'throughput'):.0f} | {cell(single)} | >= 3x | {met(single, lambda x: x >= 3)} |",
        f"| single-row p50 / p99 at that concurrency (ms) | {_median(s['mlflow'], 'p50_ms'):.1f} / "
        f"{_median(s['mlflow'], 'p99_ms'):.1f} | {_median(s['ours'], 'p50_ms'):.1f} / {_median(s['ours'], 'p99_ms'):.1f} | | | |",
        f"| p50 / p99 at the same offered load, {_median(o['mlflow'], 'rate'):.0f} req/s (ms) | "
        f"{_median(o['mlflow'], 'p50_ms'):.1f} / {_median(o['mlflow'], 'p99_ms'):.1f} | "
        f"{_median(o['ours'], 'p50_ms'):.1f} / {_median(o['ours'], 'p99_ms'):.1f} | "
        f"p99 {cell(p99, 2)} | p99 <= 0.5x | {met(p99, lambda x: x <= 0.5)} |",
        f"| 1,000-row batches, 2 connections (rows/s) | {_median(b['mlflow'], 'throughput') * 1000:,.0f} | "
        f"{_median(b['ours'], 'throughput') * 1000:,.0f} | {cell(batch)} | >= 2x | {met(batch, lambda x: x >= 2)} |",
        f"| errors (non-200 answers) | {errors['mlflow']} | {errors['ours']} | | | |",
        "",
        f"Load generator ceiling (GET /ping on our server, same connections): {r['generator_ceiling']:.0f} req/s.",
        "",
    ]


def log_cost_lines(r: dict) -> list[str]:
    """What the logs cost: the inference log (on against off, the access log off in both), then
    the access log (on against off, the inference log on in both: the default against it)."""
    cost = r["log_cost"]
    logs = {"inference log": (NO_ACCESS_LOG, NO_LOG), "access log": ("ours", NO_ACCESS_LOG)}
    turns = len(cost["single"]["ours"])

    def cell(ratios: list[float]) -> str:
        low, high = np.percentile(ratios, [25, 75])
        return f"{np.median(ratios):.3f} ({low:.3f} to {high:.3f})"

    def row(label: str, kind: str, key: str, scale: float, ok, budget: str) -> str:
        runs = cost[kind]
        figures = " | ".join(
            f"{_median(runs[name], key) * scale:,.0f}" for name in (NO_LOG, NO_ACCESS_LOG, "ours")
        )
        ratios = [_ratios(cost, kind, key, top=top, base=base) for top, base in logs.values()]
        met = " / ".join("yes" if ok(float(np.median(x))) else "**no**" for x in ratios)
        return f"| {label} | {figures} | {' | '.join(cell(x) for x in ratios)} | {budget} | {met} |"

    faster = lambda x: x >= 0.95  # noqa: E731
    cheap = lambda x: x <= 1.05  # noqa: E731
    return [
        "**What the logs cost** (the first model). Three `mlops serve` processes: as configured by "
        "default (every request in the inference log, Parquet, `MLOPS_INFERENCE_LOG_SAMPLE_RATE=1.0`, "
        "and a JSON access-log line per request, `MLOPS_SERVING_ACCESS_LOG_LEVEL=info`, to a file), "
        "the same with `MLOPS_SERVING_ACCESS_LOG_LEVEL=off`, and both logs off; in "
        f"{turns} turns of back-to-back 3-second runs, the order alternating. A log's ratio is the "
        "median over the turns of the server with it against the same without it (the inference "
        "log: the inference log alone against neither; the access log: the default against the "
        "inference log alone), with the middle half of the turns in brackets. The default server "
        f"recorded {r['logged_rows']:,} inference-log rows and wrote {r['access_lines']:,} "
        "access-log lines during the whole benchmark.",
        "",
        "| | both off | inference log | inference + access log (default) | inference log on / off "
        "| access log on / off | target (each) | met (each) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
        row("single-row throughput (req/s)", "single", "throughput", 1, faster, ">= 0.95"),
        row("1,000-row batches (rows/s)", "batch", "throughput", 1000, faster, ">= 0.95"),
        row("server CPU per single-row request (µs)", "single", "cpu_us", 1, cheap, "<= 1.05"),
        row("server CPU per 1,000-row request (µs)", "batch", "cpu_us", 1, cheap, "<= 1.05"),
        "",
        "Throughput here is shared with the load generator on the same 2 cores, and single 3-second "
        "runs of one server vary by ±10%; the server's own CPU time per request is the steadier "
        "measure of what a log adds.",
    ]
