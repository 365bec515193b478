"""Pipeline benchmark: orchestration overhead, scale, and distributed vs single-process LightGBM.

For each size (1M and 10M generated fraud rows by default), in one process and one run:

1. **plain**: the stage functions called directly (no Prefect, no MLflow);
2. **orchestrated**: the same stages as Prefect flows with MLflow tracking and registration;
3. **single-process LightGBM** on the same training split, against the Dask-distributed model
   trained in (1), both scored on the same test split.

Wall time and peak memory (resident memory of this process and all its children: Dask workers,
the Prefect API) are recorded per stage. Results go to ``docs/benchmarks.md`` (between markers)
and to a JSON file. Run with ``make benchmark`` or ``python benchmarks/pipeline.py --rows 1000000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import markers, write_section  # noqa: E402

BEGIN, END = markers("pipeline")


class PeakMemory:
    """Samples the resident memory of this process tree every 100 ms; keeps the peak."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _tree_rss(self) -> int:
        me = psutil.Process()
        total = 0
        for process in [me, *me.children(recursive=True)]:
            with suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self.peak = self._tree_rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(results: dict[str, Any], name: str, action: Callable[[], Any]) -> Any:
    """Run ``action``, storing its wall time and peak tree memory under ``results[name]``."""
    with PeakMemory() as memory:
        started = time.perf_counter()
        value = action()
        seconds = time.perf_counter() - started
    results[name] = {"seconds": round(seconds, 2), "peak_gb": round(memory.peak / 2**30, 2)}
    print(f"    {name:<28} {seconds:8.1f} s   peak {memory.peak / 2**30:5.2f} GB", flush=True)
    return value


@contextmanager
def state_folder(base: Path, name: str):
    """A fresh MLOPS_HOME (datasets, MLflow) so no mode reuses another's cached dataset."""
    home = base / name
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"
    from prefect_mlops.mlops.settings import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def make_config(source: Path, memory_limit: str, rounds: int):
    """The bundled fraud-detection use case, pointed at the generated file, with a fixed round count.

    Early stopping is off: with it, the round count varies from run to run (data-parallel
    LightGBM builds its bins from each worker's rows, and Dask places partitions on workers
    differently each time), which would swamp the overhead being measured.
    """
    import yaml

    from prefect_mlops.mlops.config import parse_config

    raw = yaml.safe_load((ROOT / "configs" / "fraud_detection.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"]["cluster"]["memory_limit"] = memory_limit
    raw["training"] |= {"n_estimators": rounds, "early_stopping_rounds": 0}
    return parse_config(raw, origin="configs/fraud_detection.yaml (benchmark)")


def run_plain(config, work: Path) -> dict[str, Any]:
    """The stage functions without Prefect or MLflow (the model gate needs MLflow: not here)."""
    from prefect_mlops.infra.dask_cluster import dask_client
    from prefect_mlops.mlops.dataset import read_split
    from prefect_mlops.mlops.families.lightgbm.training import train_lightgbm_on_dask
    from prefect_mlops.mlops.prediction import class_scores
    from prefect_mlops.mlops.settings import get_settings
    from prefect_mlops.mlops.source import fingerprint_source
    from prefect_mlops.tasks.data_gate import load_or_derive_suite, run_data_gate
    from prefect_mlops.tasks.evaluation import compute_metrics
    from prefect_mlops.tasks.preprocessing import build_dataset_version

    timings: dict[str, Any] = {}
    started = time.perf_counter()
    with PeakMemory() as memory:
        store = get_settings().resolved_artifact_store
        dataset = measure(
            timings,
            "preprocess",
            lambda: build_dataset_version(config, store, fingerprint_source(config.data)),
        )

        def data_gate():  # a first run: no champion, so the dataset is its own reference
            suite, uri = load_or_derive_suite(dataset, config.data_gate, config.data)
            return run_data_gate(
                dataset,
                dataset,
                "this dataset itself",
                suite,
                uri,
                config.data_gate.max_rows_validated,
            )

        measure(timings, "data-gate", data_gate)

        def train():
            with dask_client(config.training.cluster) as client:
                return train_lightgbm_on_dask(client, dataset, config.training, str(work / "curve"))

        trained = measure(timings, "train", train)

        def evaluate():
            frame = read_split(dataset, "test")
            out = trained.predictor.predict(frame)
            scores = class_scores(out, dataset.task, dataset.classes)
            return compute_metrics(dataset.task, frame["__target__"].to_numpy(), scores)

        metrics = measure(timings, "evaluate", evaluate)
    timings["total"] = {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_gb": round(memory.peak / 2**30, 2),
    }
    return {"stages": timings, "metrics": metrics, "dataset": dataset, "trained": trained}


def run_orchestrated(config) -> dict[str, Any]:
    """The real ``retraining-pipeline`` flow: stage sub-flows, MLflow tracking, registration.

    The whole-pipeline time is wall clock; per-stage times are each stage flow run's start to
    end as recorded by the Prefect API.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from prefect_mlops.flows.retrain import retraining_pipeline_flow
    from prefect_mlops.infra.prefect_runtime import without_flow_heartbeats

    timings: dict[str, Any] = {}
    with (
        PeakMemory() as memory,
        without_flow_heartbeats(),  # as `mlops run` starts it
        temporary_settings(
            {PREFECT_TASKS_REFRESH_CACHE: True}
        ),  # measure the work, not a cache hit
    ):
        started = time.perf_counter()
        state = retraining_pipeline_flow(config, return_state=True)
        seconds = time.perf_counter() - started
    result = state.result()
    print(
        f"    {'whole pipeline':<28} {seconds:8.1f} s   peak {memory.peak / 2**30:5.2f} GB",
        flush=True,
    )
    with get_client(sync_client=True) as client:
        parent = FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
        )
        for run in client.read_flow_runs(flow_run_filter=parent):
            flow_name = client.read_flow(run.flow_id).name
            timings[flow_name] = {
                "seconds": round((run.end_time - run.start_time).total_seconds(), 2)
            }
            print(
                f"    {flow_name:<28} {timings[flow_name]['seconds']:8.1f} s   (Prefect flow run)",
                flush=True,
            )
    timings["total"] = {"seconds": round(seconds, 2), "peak_gb": round(memory.peak / 2**30, 2)}
    return {"stages": timings, "metrics": result.metrics}


def run_single_process(dataset, config) -> dict[str, Any]:
    """Plain ``lightgbm.train`` on the whole training split in one process (2 threads)."""
    import lightgbm as lgb
    import numpy as np

    from prefect_mlops.mlops.dataset import read_split
    from prefect_mlops.mlops.families.lightgbm.training import lightgbm_params
    from prefect_mlops.mlops.features import build_features
    from prefect_mlops.tasks.evaluation import compute_metrics

    timings: dict[str, Any] = {}

    def load():
        train, valid = read_split(dataset, "train"), read_split(dataset, "validation")
        spec = dataset.feature_spec
        return (
            build_features(train, spec),
            train["__target__"].to_numpy(),
            build_features(valid, spec),
            valid["__target__"].to_numpy(),
        )

    x_train, y_train, x_valid, y_valid = measure(timings, "load training data", load)
    params = lightgbm_params(config.training, dataset)
    rounds = params.pop("n_estimators")
    for key in ("time_out", "random_state", "colsample_bytree"):
        params.pop(key, None)
    params |= {
        "num_threads": 2,
        "seed": config.training.seed,
        "feature_fraction": config.training.feature_fraction,
    }

    def train():
        train_set = lgb.Dataset(
            x_train, y_train, categorical_feature=dataset.feature_spec.categorical_features
        )
        valid_set = lgb.Dataset(x_valid, y_valid, reference=train_set)
        return lgb.train(
            params,
            train_set,
            rounds,
            valid_sets=[valid_set],
            callbacks=[lgb.early_stopping(config.training.early_stopping_rounds, verbose=False)],
        )

    booster = measure(timings, "train", train)
    test = read_split(dataset, "test")
    scores = booster.predict(
        build_features(test, dataset.feature_spec).to_numpy(),
        num_iteration=booster.best_iteration or None,
    )
    metrics = compute_metrics(dataset.task, test["__target__"].to_numpy(), np.asarray(scores))
    return {
        "stages": timings,
        "metrics": metrics,
        "best_iteration": booster.best_iteration or booster.current_iteration(),
    }


def benchmark_size(
    rows: int, base: Path, memory_limit: str, rounds: int, repeats: int
) -> dict[str, Any]:
    from prefect_mlops.mlops.synthetic import write_dataset

    print(f"\n== {rows:,} rows", flush=True)
    source = base / f"fraud-{rows}.parquet"
    result: dict[str, Any] = {"rows": rows, "rounds": rounds, "generate": {}}
    measure(result["generate"], "generate", lambda: write_dataset("fraud", rows, source, seed=1))
    result["source_mb"] = round(source.stat().st_size / 2**20, 1)
    config = make_config(source, memory_limit, rounds)

    from prefect_mlops.tasks.tracking import experiment_for

    plains, orchestrateds = [], []
    for attempt in range(repeats):  # alternate the modes so drift hits both alike
        print(f"  plain (no Prefect, no MLflow), run {attempt + 1}/{repeats}:", flush=True)
        with state_folder(base, f"plain-{rows}-{attempt}"):
            plains.append(run_plain(config, base / f"plain-{rows}-{attempt}"))
        print(f"  orchestrated (Prefect flows + MLflow), run {attempt + 1}/{repeats}:", flush=True)
        with state_folder(base, f"orchestrated-{rows}-{attempt}"):
            experiment_for(config)  # create the MLflow store once, as an installation would have it
            orchestrateds.append(run_orchestrated(config))
    plain, orchestrated = _median_run(plains), _median_run(orchestrateds)
    print("  single-process LightGBM:", flush=True)
    single = run_single_process(plain["dataset"], config)

    trained = plain["trained"]
    result |= {
        "repeats": repeats,
        "plain_totals": [p["stages"]["total"]["seconds"] for p in plains],
        "orchestrated_totals": [o["stages"]["total"]["seconds"] for o in orchestrateds],
        "plain": plain["stages"],
        "orchestrated": orchestrated["stages"],
        "metrics": {"plain": plain["metrics"], "orchestrated": orchestrated["metrics"]},
        "distributed": {
            "train_seconds": plain["stages"]["train"]["seconds"],
            "best_iteration": trained.best_iteration,
            "iterations_run": trained.iterations_run,
            "roc_auc": plain["metrics"]["roc_auc"],
            "log_loss": plain["metrics"]["log_loss"],
        },
        "single_process": {
            "train_seconds": single["stages"]["train"]["seconds"],
            "best_iteration": single["best_iteration"],
            "roc_auc": single["metrics"]["roc_auc"],
            "log_loss": single["metrics"]["log_loss"],
        },
    }
    for folder in base.glob(f"*-{rows}-*"):
        shutil.rmtree(folder, ignore_errors=True)
    source.unlink()
    return result


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose whole-pipeline time is the median."""
    return sorted(runs, key=lambda r: r["stages"]["total"]["seconds"])[len(runs) // 2]


STAGES = ("preprocess", "data-gate", "train", "evaluate", "register", "model-gate")


def overhead_share(result: dict[str, Any]) -> float:
    """Orchestration cost as a share of wall time, on the stages both modes run."""
    only = sum(
        result["orchestrated"][s]["seconds"]
        for s in STAGES
        if s not in result["plain"] and s in result["orchestrated"]
    )
    orchestrated = result["orchestrated"]["total"]["seconds"] - only
    return (orchestrated - result["plain"]["total"]["seconds"]) / orchestrated * 100


def render(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        BEGIN,
        f"Measured {machine['date']} on {machine['cores']} cores, {machine['memory_gb']} GB RAM, "
        f"Python {machine['python']}, by `python benchmarks/pipeline.py --rows {' '.join(str(r['rows']) for r in results)}`. "
        f"Use case: `configs/fraud_detection.yaml` (binary, ~1.6% positives; LightGBM lr 0.05, 31 leaves) "
        f"on data from its generator, trained for a fixed {results[0]['rounds']} rounds with early stopping off: with "
        "early stopping the round count changes from run to run (data-parallel LightGBM builds its bins from each "
        "worker's rows, and Dask places partitions on workers differently each time; best rounds of 206 and 252 "
        "were seen at 10M rows), which would swamp the overhead being measured. LocalCluster of 2 workers x 1 "
        "thread with 6 GiB each. "
        "Peak memory is the resident memory of the whole process tree (driver, Dask workers and nannies, "
        "and in orchestrated mode the Prefect API server), sampled every 100 ms.",
        "",
        "### Orchestration overhead (same stage functions, with and without Prefect + MLflow)",
        "",
        "| rows | stage | plain s | orchestrated s | difference s | plain peak GB | orchestrated peak GB |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for stage in (*STAGES, "total"):
            plain = r["plain"].get(stage, {"seconds": 0.0, "peak_gb": 0.0})
            orch = r["orchestrated"][stage]
            if stage == "total":
                label = f"**whole pipeline** (overhead {overhead_share(r):.1f}% of wall time)"
                orch_peak = f"{orch['peak_gb']:.2f}"
            else:
                plain_only = "" if stage in r["plain"] else " (orchestrated only)"
                label, orch_peak = stage + plain_only, "n/a"
            lines.append(
                f"| {r['rows']:,} | {label} | {plain['seconds']:.1f} | {orch['seconds']:.1f} | "
                f"{orch['seconds'] - plain['seconds']:+.1f} | {plain['peak_gb']:.2f} | {orch_peak} |"
            )
    lines += [
        "",
        "Sizes up to 2M rows run each mode "
        + (
            ", ".join(f"{r['repeats']}x" for r in results if r["repeats"] > 1)
            if any(r["repeats"] > 1 for r in results)
            else "once"
        )
        + " (alternating) and report the run with the median total; whole-pipeline totals of every run: "
        + "; ".join(
            f"{r['rows']:,} rows plain {r['plain_totals']} s, orchestrated {r['orchestrated_totals']} s"
            for r in results
        )
        + ". Orchestrated = the real `retraining-pipeline` flow (`flows/retrain.py`); its whole-pipeline time is "
        "wall clock, its per-stage times are each stage flow run's start-to-end as recorded by Prefect (so they "
        "leave out the parent flow's own bookkeeping between stages). `register` and `model-gate` (it loads the "
        "model through MLflow and times 200 single-row predictions) exist only there, and the overhead share "
        "leaves them out: (orchestrated total - those stages - plain total) / (orchestrated total - those "
        "stages). Not counted, "
        "as one-offs a running installation has already paid: starting Prefect's temporary API server (about "
        "10 s per process), importing Great Expectations (about 3 s per process) and creating the MLflow "
        "database.",
        "",
        f"Prefect's fixed cost per flow run, measured in the same run: an empty sub-flow run takes "
        f"{machine['empty_subflow_seconds']:.2f} s with Prefect's default heartbeat and "
        f"{machine['empty_subflow_seconds_no_heartbeat']:.2f} s without it (median of 5): Prefect 3.8 joins the "
        "heartbeat thread at the end of every flow run while that thread sleeps in 1 s steps. The pipeline "
        "therefore runs its stage sub-flows without heartbeats of their own, and `mlops run` (no deployment, "
        "nothing watches the heartbeat) starts the pipeline without one (`infra/prefect_runtime.py`); the "
        "orchestrated runs here are started the same way. Flow runs started by workers from deployments keep "
        "theirs. The remaining overhead is MLflow "
        "logging: parameters, per-round metrics, plots, dataset inputs, the model with its signature and "
        "input-example check, reloading the model for evaluation, and registration.",
        "",
        "### Distributed (lightgbm.dask, 2 workers x 1 thread) vs single process (lightgbm.train, 2 threads)",
        "",
        "| rows | distributed train s | single-process train s | time ratio (dist / single) | "
        "distributed test ROC-AUC | single test ROC-AUC | ROC-AUC difference | rounds (dist / single) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        d, s = r["distributed"], r["single_process"]
        diff = (d["roc_auc"] - s["roc_auc"]) / s["roc_auc"] * 100
        lines.append(
            f"| {r['rows']:,} | {d['train_seconds']:.1f} | {s['train_seconds']:.1f} | "
            f"{d['train_seconds'] / s['train_seconds']:.2f} | {d['roc_auc']:.4f} | {s['roc_auc']:.4f} | "
            f"{diff:+.2f}% | {d['best_iteration']} / {s['best_iteration']} |"
        )
    lines += [
        "",
        "Both train the same number of rounds with the same parameters on the same training split and are "
        "scored on the same test split; the distributed time includes starting the LocalCluster and moving "
        "partitions to the workers.",
        "",
        "### Scale",
        "",
        "| rows | source file MB | generate s | orchestrated pipeline s | orchestrated peak GB | plain peak GB |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['rows']:,} | {r['source_mb']:.0f} | {r['generate']['generate']['seconds']:.1f} | "
            f"{r['orchestrated']['total']['seconds']:.1f} | {r['orchestrated']['total']['peak_gb']:.2f} | "
            f"{r['plain']['total']['peak_gb']:.2f} |"
        )
    lines.append(END)
    return "\n".join(lines)


def write_doc(section: str) -> None:
    write_section("pipeline", "Pipeline", section)


def _noop() -> None:
    return None


def _empty_subflows(count: int, heartbeat: bool) -> list[float]:
    from contextlib import nullcontext

    from prefect import flow

    from prefect_mlops.infra.prefect_runtime import without_flow_heartbeats

    child = flow(name="benchmark-empty-stage")(_noop)
    seconds = []
    with nullcontext() if heartbeat else without_flow_heartbeats():
        for _ in range(count):
            started = time.perf_counter()
            child()
            seconds.append(time.perf_counter() - started)
    return seconds


def prefect_flow_run_cost(heartbeat: bool) -> float:
    """Median wall time of an empty sub-flow run: Prefect's fixed cost per stage."""
    from prefect import flow

    parent = flow(name="benchmark-flow-run-cost")(_empty_subflows)
    return sorted(parent(5, heartbeat))[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--memory-limit", default="6GiB", help="Per Dask worker (2 workers).")
    parser.add_argument(
        "--rounds", type=int, default=200, help="Boosting rounds (early stopping off)."
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="Runs per mode for sizes up to 2M rows (median kept)."
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="Scratch folder (default: a temp dir)."
    )
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks-pipeline.json")
    parser.add_argument(
        "--no-doc", action="store_true", help="Print only; do not touch docs/benchmarks.md."
    )
    args = parser.parse_args()

    base = Path(args.workdir or tempfile.mkdtemp(prefix="mlops-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(base / "prefect")
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"  # stage tasks timed alone
    from prefect_mlops.infra.environment import configure_environment
    from prefect_mlops.mlops.settings import Settings

    configure_environment(Settings(home=base))
    from prefect import flow

    warm_up = flow(name="benchmark-warm-up")(_noop)
    warm_up()  # start Prefect's temporary API before timing anything
    import great_expectations  # noqa: F401  (its first import takes seconds; paid once per process)

    machine = {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    machine["empty_subflow_seconds"] = round(prefect_flow_run_cost(heartbeat=True), 2)
    machine["empty_subflow_seconds_no_heartbeat"] = round(prefect_flow_run_cost(heartbeat=False), 2)
    print(
        f"empty sub-flow run: {machine['empty_subflow_seconds']} s with heartbeat, "
        f"{machine['empty_subflow_seconds_no_heartbeat']} s without",
        flush=True,
    )
    results = [
        benchmark_size(
            rows, base, args.memory_limit, args.rounds, args.repeat if rows <= 2_000_000 else 1
        )
        for rows in args.rows
    ]
    args.json.write_text(
        json.dumps({"machine": machine, "results": results}, indent=2, default=str)
    )
    section = render(results, machine)
    print("\n" + section)
    if not args.no_doc:
        write_doc(section)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
