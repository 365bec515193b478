"""How the data gate's default suite behaves: false alarms, detection, and cost.

For each bundled generator, a reference dataset is preprocessed and the default suite derived
from it (as for a champion's training data). Then, with the same plain functions the data-gate
flow calls:

* false alarms: fresh samples from the same generator (other seeds, same and other sizes) must
  pass; every failed expectation on them is a false alarm;
* detection: the six kinds of damage of the integration tests, at the same severity, must fail;
* cost: seconds to validate, per million rows.

Writes the "Data gate" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import markers, write_section  # noqa: E402

BEGIN, END = markers("data-gate")
CONFIGS = {"fraud": "fraud_detection.yaml", "car_dealership": "car_dealership.yaml"}


def config_for(generator: str, source: Path):
    """The bundled use case with its data_gate section removed: the defaults are measured."""
    import yaml

    from prefect_mlops.mlops.config import parse_config

    raw = yaml.safe_load((ROOT / "configs" / CONFIGS[generator]).read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw.pop("data_gate", None)
    return parse_config(raw, origin=f"configs/{CONFIGS[generator]} (defaults)")


def damage(frame: pd.DataFrame, kind: str, generator: str) -> pd.DataFrame:
    """The integration tests' kinds of damage, applied to a column each generator has."""
    rng = np.random.default_rng(11)
    numeric = {"fraud": "amount", "car_dealership": "annual_income"}[generator]
    other = {"fraud": "customer_age", "car_dealership": "age"}[generator]
    target = {"fraud": "is_fraud", "car_dealership": "segment"}[generator]
    frame = frame.copy()
    if kind == "renamed column":
        return frame.rename(columns={other: f"{other}_renamed"})
    if kind == "wrong dtype":
        return frame.assign(**{other: frame[other].map(lambda v: f"{v} units", na_action="ignore")})
    if kind == "out-of-range values":
        frame.loc[rng.random(len(frame)) < 0.03, numeric] = -250.0
        return frame
    if kind == "burst of nulls":
        frame.loc[rng.random(len(frame)) < 0.4, other] = np.nan
        return frame
    if kind == "shifted distribution":
        return frame.assign(**{numeric: frame[numeric] * 1.8})
    if kind == "flipped labels":  # a tenth of the labels wrong
        flip = rng.random(len(frame)) < 0.1
        if generator == "fraud":
            frame.loc[flip, target] = 1 - frame.loc[flip, target]
        else:  # multiclass: relabelled as the rarest class
            frame.loc[flip, target] = frame[target].value_counts().idxmin()
        return frame
    raise ValueError(kind)


KINDS = (
    "renamed column",
    "wrong dtype",
    "out-of-range values",
    "burst of nulls",
    "shifted distribution",
    "flipped labels",
)


def gate(config, reference, suite, uri, store: str) -> tuple[Any, float, int]:
    from prefect_mlops.mlops.source import fingerprint_source
    from prefect_mlops.tasks.data_gate import run_data_gate
    from prefect_mlops.tasks.preprocessing import build_dataset_version

    candidate = build_dataset_version(config, store, fingerprint_source(config.data))
    started = time.perf_counter()
    result = run_data_gate(
        candidate, reference, "reference", suite, uri, config.data_gate.max_rows_validated
    )
    return result, time.perf_counter() - started, result.rows_validated


def run_generator(generator: str, rows: int, seeds: int, base: Path) -> dict[str, Any]:
    from prefect_mlops.mlops.source import fingerprint_source
    from prefect_mlops.mlops.synthetic import write_dataset
    from prefect_mlops.tasks.data_gate import load_or_derive_suite
    from prefect_mlops.tasks.preprocessing import build_dataset_version

    store = str(base / "store")
    source = write_dataset(generator, rows, base / f"{generator}-ref.parquet", seed=1)
    config = config_for(generator, source)
    reference = build_dataset_version(config, store, fingerprint_source(config.data))
    suite, uri = load_or_derive_suite(reference, config.data_gate, config.data)
    out: dict[str, Any] = {
        "generator": generator,
        "rows": rows,
        "expectations": len(suite["expectations"]),
    }
    alarms: dict[str, int] = {}
    runs, alarmed, timings = 0, 0, []
    for size in (rows, int(rows * 0.6)):  # both inside the default row-count bounds
        for seed in range(100, 100 + seeds):
            fresh = write_dataset(
                generator, size, base / f"{generator}-{size}-{seed}.parquet", seed=seed
            )
            result, seconds, validated = gate(
                config_for(generator, fresh), reference, suite, uri, store
            )
            runs += 1
            alarmed += bool(result.failures)
            timings.append(seconds / validated * 1e6)
            for check in result.failures:
                alarms[check.description] = alarms.get(check.description, 0) + 1
    out |= {"fresh_runs": runs, "runs_with_false_alarm": alarmed, "false_alarms": alarms}
    frame = pd.read_parquet(source)
    detected = {}
    for kind in KINDS:
        damaged = base / f"{generator}-{kind.replace(' ', '-')}.parquet"
        damage(frame, kind, generator).to_parquet(damaged)
        result, _, _ = gate(config_for(generator, damaged), reference, suite, uri, store)
        detected[kind] = [c.description for c in result.failures]
    out["detected"] = detected
    out["seconds_per_million_rows"] = float(np.median(timings))
    return out


def render(results: list[dict[str, Any]], seeds: int) -> str:
    lines = [
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores by `python benchmarks/data_gate.py`. "
        "Default `data_gate` settings (the bundled configs' own `data_gate` sections removed). For each "
        "generator a reference dataset is preprocessed and the suite derived from all its rows, as for a "
        f"champion's training data; then fresh samples of the same generator ({seeds} seeds at the "
        "reference's size and at 0.6 of it, both inside the default row-count bounds) and six kinds of "
        "damage (as in `tests/integration/test_gates.py`) are validated with the same functions the "
        "`data-gate` flow calls. A failed expectation on a fresh sample is a false alarm. Validation "
        "time covers reading the rows, the GX checkpoint and rendering Data Docs (GX imported already).",
        "",
        "| generator | reference rows | expectations | fresh samples | fresh samples with a false alarm | "
        "damage detected | validation s per 1M rows |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        caught = sum(bool(v) for v in r["detected"].values())
        lines.append(
            f"| {r['generator']} | {r['rows']:,} | {r['expectations']} | {r['fresh_runs']} | "
            f"{r['runs_with_false_alarm']} | {caught} of {len(r['detected'])} | "
            f"{r['seconds_per_million_rows']:.1f} |"
        )
    lines += ["", "Which expectations failed, per kind of damage:", ""]
    lines += ["| generator | damage | failed expectations |", "|---|---|---|"]
    for r in results:
        for kind, failures in r["detected"].items():
            shown = "; ".join(failures) if failures else "**none: not detected**"
            lines.append(f"| {r['generator']} | {kind} | {shown} |")
    alarms = {r["generator"]: r["false_alarms"] for r in results if r["false_alarms"]}
    if alarms:
        lines += [
            "",
            f"False alarms (expectation: number of fresh samples it failed on): {alarms}.",
        ]
    lines.append(END)
    return "\n".join(lines)


def write_doc(section: str) -> None:
    write_section("data-gate", "Data gate", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="Reference size.")
    parser.add_argument("--seeds", type=int, default=5, help="Fresh samples per size.")
    parser.add_argument("--no-doc", action="store_true", help="Print only.")
    args = parser.parse_args()
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with tempfile.TemporaryDirectory(prefix="data-gate-bench-") as tmp:
        results = [
            run_generator(g, args.rows, args.seeds, Path(tmp) / g)
            for g in ("fraud", "car_dealership")
        ]
    section = render(results, args.seeds)
    print(section)
    if not args.no_doc:
        write_doc(section)


if __name__ == "__main__":
    main()
