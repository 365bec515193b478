"""The two model families on the same data: training time, peak worker memory, test metric.

For each case (the bundled use cases at their configured size, a regression on the car
dealership data, and a larger generated fraud dataset), one dataset version is preprocessed,
then each family trains on it through the train stage's own code (``measure_training`` with
the family's ``dask_trainer``: a fresh LocalCluster of 2 workers x 1 thread, 4 GiB each, as the
pipeline builds it), with the use case's parameters (LightGBM-named; XGBoost maps them, see
docs/model-families.md) and early stopping on the validation split. Each model then scores the
test split. Every training runs ``--repeats`` times; times and peaks are medians.

Writes the "Model families" section of docs/benchmarks.md.
Run: ``python benchmarks/families.py`` (about 25 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import markers, write_section  # noqa: E402

BEGIN, END = markers("families")
FAMILIES = ("lightgbm", "xgboost")
GIB = 2**30


@dataclass(frozen=True)
class Case:
    """One dataset both families train on."""

    label: str
    generator: str
    config: str
    rows: int
    data: dict[str, Any] = field(default_factory=dict)
    """Changes to the config's ``data`` section (another target)."""


CASES = (
    Case("fraud detection (binary)", "fraud", "fraud_detection.yaml", 200_000),
    Case(
        "car dealership (multiclass, 6 classes)", "car_dealership", "car_dealership.yaml", 100_000
    ),
    Case(
        "car dealership: children (regression)",
        "car_dealership",
        "car_dealership.yaml",
        100_000,
        {"target": "children", "task": "regression"},
    ),
    Case("fraud, generated larger (binary)", "fraud", "fraud_detection.yaml", 1_000_000),
)
METRICS = {
    "binary": ("roc_auc", "f1"),
    "multiclass": ("roc_auc", "f1"),
    "regression": ("rmse", "r2"),
}
"""The test metrics reported per task (F1 at the 0.5 threshold; macro for multiclass)."""


def prepare(case: Case, work: Path):
    """The case's data file, config and preprocessed dataset version."""
    import yaml

    from prefect_mlops.mlops.config import parse_config
    from prefect_mlops.mlops.source import fingerprint_source
    from prefect_mlops.mlops.synthetic import write_dataset
    from prefect_mlops.tasks.preprocessing import build_dataset_version

    source = work / f"{case.generator}-{case.rows}.parquet"
    if not source.exists():
        write_dataset(case.generator, case.rows, source, seed=17, chunk_rows=250_000)
    raw = yaml.safe_load((ROOT / "configs" / case.config).read_text())
    raw["data"] |= {"source": str(source), **case.data}
    raw["data"].pop("synthetic")
    config = parse_config(raw, origin=f"configs/{case.config} ({case.label})")
    store = str(work / "store" / case.label.split(" ")[0])
    return config, build_dataset_version(config, store, fingerprint_source(config.data))


def train_once(name: str, dataset, config, work: Path) -> dict[str, Any]:
    """One training of family ``name`` as the train stage runs it; its figures and test metrics."""
    from prefect_mlops.infra.allocator.history import ClusterShape
    from prefect_mlops.infra.allocator.profiling import measure_training
    from prefect_mlops.mlops.dataset import TARGET_COLUMN, read_split
    from prefect_mlops.mlops.families import family
    from prefect_mlops.mlops.prediction import class_scores
    from prefect_mlops.tasks.evaluation import compute_metrics
    from prefect_mlops.tasks.training import dask_trainer

    shape = ClusterShape(workers=2, threads_per_worker=1, memory_per_worker_bytes=4 * GIB)
    scratch = tempfile.mkdtemp(prefix=f"scratch-{name}-", dir=work)  # a fresh one each run
    trainer = dask_trainer(family(name), dataset, scratch)
    trained, startup, wall = measure_training(trainer, config.training, shape)
    test = read_split(dataset, "test")
    scores = class_scores(trained.predictor.predict(test), dataset.task, dataset.classes)
    metrics = compute_metrics(dataset.task, test[TARGET_COLUMN].to_numpy(), scores)
    return {
        "wall_s": wall,
        "startup_s": startup,
        "peak_mib": max(trained.peak_worker_memory_bytes.values()) / 2**20,
        "rounds": trained.iterations_run,
        "best": trained.best_iteration,
        "validation": trained.validation_curve[trained.best_iteration - 1],
        "metric_name": trained.validation_metric,
        **metrics,
    }


def run_case(case: Case, work: Path, repeats: int) -> dict[str, Any]:
    """Both families on one case, ``repeats`` times each, alternating which goes first."""
    started = time.perf_counter()
    config, dataset = prepare(case, work)
    runs: dict[str, list[dict]] = {name: [] for name in FAMILIES}
    for number in range(repeats):
        for name in FAMILIES if number % 2 == 0 else tuple(reversed(FAMILIES)):
            print(f"{case.label}: {name}, run {number + 1}/{repeats} ...", flush=True)
            runs[name].append(train_once(name, dataset, config, work))
    return {
        "case": case,
        "task": dataset.task,
        "train_rows": dataset.row_counts["train"],
        "test_rows": dataset.row_counts["test"],
        "config": config.training,
        "runs": runs,
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- the report


def _median(runs: list[dict], key: str) -> float:
    return float(np.median([run[key] for run in runs]))


def case_lines(result: dict[str, Any]) -> list[str]:
    """One case's table: each family's figures and XGBoost's over LightGBM's."""
    case, runs, training = result["case"], result["runs"], result["config"]
    lgb, xgb = runs["lightgbm"], runs["xgboost"]
    metric = lgb[0]["metric_name"]
    rows = [
        ("training wall time (s)", "wall_s", "{:.1f}"),
        ("peak worker memory (MiB)", "peak_mib", "{:.0f}"),
        ("boosting rounds run (best)", None, None),
        (f"best validation {metric}", "validation", "{:.4f}"),
        *[(f"test {m}", m, "{:.4f}") for m in METRICS[result["task"]]],
    ]
    lines = [
        f"**{case.label}**: {result['train_rows']:,} training and {result['test_rows']:,} test "
        f"rows; `{case.config}` parameters: up to {training.n_estimators} rounds, learning rate "
        f"{training.learning_rate}, {training.num_leaves} leaves, early stopping after "
        f"{training.early_stopping_rounds}.",
        "",
        "| | LightGBM | XGBoost | XGBoost / LightGBM |",
        "|---|---:|---:|---:|",
    ]
    for label, key, fmt in rows:
        if key is None:
            cells = [f"{_median(r, 'rounds'):.0f} ({_median(r, 'best'):.0f})" for r in (lgb, xgb)]
            ratio = _median(xgb, "rounds") / _median(lgb, "rounds")
        else:
            cells = [fmt.format(_median(r, key)) for r in (lgb, xgb)]
            ratio = _median(xgb, key) / _median(lgb, key)
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio:.2f} |")
    per_round = [_median(r, "wall_s") / _median(r, "rounds") * 1000 for r in (lgb, xgb)]
    lines.append(
        f"| time per round (ms) | {per_round[0]:.0f} | {per_round[1]:.0f} | "
        f"{per_round[1] / per_round[0]:.2f} |"
    )
    return [*lines, ""]


def report(results: list[dict[str, Any]], repeats: int, seconds: float) -> str:
    """The "Model families" section of docs/benchmarks.md."""
    lines = [
        BEGIN,
        f"Measured on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, by `python benchmarks/families.py` in {seconds / 60:.0f} "
        f"min. Each family trains {repeats} time(s) per case, alternating which goes first, on a "
        "fresh LocalCluster of 2 workers x 1 thread (4 GiB each) through the train stage's code "
        "(`measure_training` with the family's trainer), with the same parameters and early "
        "stopping on the same validation rows; the models score the same test rows. Times (data "
        "loading included, cluster start-up excluded) and peaks (the larger worker's resident "
        "memory) are medians. F1 is at the 0.5 threshold (macro over classes for multiclass).",
        "",
    ]
    for result in results:
        lines += case_lines(result)
    return "\n".join([*lines, END])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="Trainings per family and case.")
    parser.add_argument(
        "--cases", type=int, nargs="*", help="Indexes into CASES (default: all of them)."
    )
    parser.add_argument("--no-doc", action="store_true", help="Print, do not write the doc.")
    args = parser.parse_args()
    chosen = [CASES[i] for i in args.cases] if args.cases else list(CASES)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="families-bench-") as tmp:
        os.environ["MLOPS_HOME"] = str(Path(tmp) / ".mlops")
        results = [run_case(case, Path(tmp), args.repeats) for case in chosen]
    section = report(results, args.repeats, time.perf_counter() - started)
    if not args.no_doc:
        write_section("families", "Model families", section)
    print(section)


if __name__ == "__main__":
    main()
