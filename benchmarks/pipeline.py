"""Pipeline benchmark: the stack vs one process vs plain functions vs ``lightgbm.train`` alone.

For each size (200k, 1M and 10M generated fraud rows by default), in one run and on one machine:

1. **one process**: ``mlops run --config ...``, every stage a sub-flow of the pipeline's flow run;
2. **stack**: ``mlops trigger --config ...`` on the local stack (``mlops up``), every stage a run
   of its own deployment, started by the worker of its own work pool;
3. **plain functions**: the stage functions called directly (no Prefect, no MLflow, no gates'
   MLflow half: the model gate and deploy need a registry);
4. **lightgbm.train**: plain ``lightgbm.train`` in this process on the same training split,
   parameters, threads and rounds.

Modes 1 and 2 run as the commands a user types, against the same Prefect and MLflow servers
(the stack's), and are timed from start to exit (trigger to result); their per-stage times are
read back from the Prefect API. Peak memory is the resident memory of every process involved
(this one and its children, and the stack's servers, workers and their children), sampled every
100 ms. Results go to ``docs/benchmarks.md`` (between markers) and to a JSON file.

Run with ``make benchmark`` or ``python benchmarks/pipeline.py --rows 200000``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import markers, write_section  # noqa: E402

BEGIN, END = markers("pipeline")
MLOPS = str(Path(sys.executable).parent / "mlops")
STAGES = ("preprocess", "data-gate", "train", "evaluate", "register", "model-gate", "deploy")
MODES = ("one-process", "stack")
TARGETS = {
    "stack / one process": {200_000: 1.3, 1_000_000: 1.1},
    "one process / lightgbm.train": {1_000_000: 2.0, 10_000_000: 1.5},
}
"""Issue 22's targets, by ratio and size: the measured ratio must be at most this."""


# ---------------------------------------------------------------- measuring


class PeakMemory:
    """Samples the resident memory of some process trees every 100 ms; keeps the peak.

    Args:
        roots: Called at each sample: the processes whose trees count (default: this one).
    """

    def __init__(self, roots: Callable[[], list[psutil.Process]] | None = None) -> None:
        self.peak = 0
        self._roots = roots or (lambda: [psutil.Process()])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def tree_rss(self) -> int:
        seen: dict[int, psutil.Process] = {}
        for root in self._roots():
            with suppress(psutil.Error):
                for process in [root, *root.children(recursive=True)]:
                    seen[process.pid] = process
        total = 0
        for process in seen.values():
            with suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.tree_rss())
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self.peak = self.tree_rss()
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- the use case


def benchmark_config(source: Path, rounds: int, memory_limit: str) -> dict[str, Any]:
    """The bundled fraud-detection use case on ``source``, trained the same way in every mode.

    A fixed round count (early stopping off) and a fixed cluster of one Dask worker with two
    threads, the threads ``lightgbm.train`` gets (the allocator off: it would pick from the
    history the runs before wrote). One worker trains the same model every time, so every mode
    must give the same test metrics.
    """
    raw = yaml.safe_load((ROOT / "configs" / "fraud_detection.yaml").read_text())
    raw["data"]["source"] = str(source)
    raw["data"].pop("synthetic")
    raw["training"] |= {"n_estimators": rounds, "early_stopping_rounds": 0}
    raw["training"]["allocator"] = {"enabled": False}
    raw["training"]["cluster"] = {
        "n_workers": 1,
        "threads_per_worker": 2,
        "memory_limit": memory_limit,
    }
    return raw


def config_file(base: Path, source: Path, raw: dict[str, Any], run: str) -> Path:
    """The config of one run, on its own hard link of the source.

    Each run gets a new file name, so its source fingerprint is new: preprocessing and the data
    gate run in full instead of hitting Prefect's cache of the run before, as new data would.
    """
    linked = base / f"{source.stem}-{run}{source.suffix}"
    if not linked.exists():
        os.link(source, linked)
    path = base / f"config-{run}.yaml"
    path.write_text(yaml.safe_dump(raw | {"data": raw["data"] | {"source": str(linked)}}))
    return path


# ---------------------------------------------------------------- the stack and the commands


class Stack:
    """The local stack (``mlops up``) in its own home on free ports; ``mlops down`` at the end."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.env = {
            k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))
        } | {"MLOPS_HOME": str(home)}

    def command(self, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
        return subprocess.run(
            [MLOPS, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def up(self) -> float:
        started = time.perf_counter()
        ports = []
        for name in ("prefect", "mlflow", "serving"):
            ports += [f"--{name}-port", str(free_port())]
        done = self.command("up", *ports, timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"mlops up failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return time.perf_counter() - started

    def down(self) -> None:
        self.command("down", timeout=300)

    def state(self) -> Any:
        from prefect_mlops.infra.stack.state import read_state

        return read_state(self.home)

    def processes(self) -> list[psutil.Process]:
        found = []
        state = self.state()
        for record in state.processes.values() if state else []:
            with suppress(psutil.Error):
                found.append(psutil.Process(record.pid))
        return found


def run_command(stack: Stack, mode: str, config: Path) -> dict[str, Any]:
    """``mlops run`` (one process) or ``mlops trigger`` (the stack) on ``config``, timed.

    Returns:
        Wall time from start to exit, the peak memory of every process involved, and the
        pipeline's per-stage times and test metrics read back from Prefect and MLflow.
    """
    verb = "run" if mode == "one-process" else "trigger"
    command = [MLOPS, verb, "--config", str(config)]
    child: list[psutil.Process] = []
    with PeakMemory(lambda: [psutil.Process(), *child, *stack.processes()]) as memory:
        started = time.perf_counter()
        process = subprocess.Popen(
            command, cwd=ROOT, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        child.append(psutil.Process(process.pid))
        output, _ = process.communicate(timeout=3 * 3600)
        seconds = time.perf_counter() - started
    text = output.decode(errors="replace")
    if process.returncode not in (0, 3):  # 3: the model gate rejected the candidate, a valid end
        raise RuntimeError(f"mlops {verb} exited {process.returncode}:\n{text[-4000:]}")
    stages, run_name = pipeline_stages(stack)
    result = {
        "total": {"seconds": round(seconds, 2), "peak_gb": round(memory.peak / 2**30, 2)},
        "exit_code": process.returncode,
        "stages": stages,
        "metrics": pipeline_metrics(stack, config, run_name),
    }
    print(
        f"    {mode:<14} {seconds:8.1f} s   peak {memory.peak / 2**30:5.2f} GB   exit "
        f"{process.returncode}   "
        + "  ".join(f"{name} {stage['seconds']:.1f}" for name, stage in stages.items()),
        flush=True,
    )
    return result


def pipeline_stages(stack: Stack) -> tuple[dict[str, Any], str]:
    """The newest pipeline flow run's stages: run time, and the wait before each started.

    ``wait_s`` is from the stage's flow run being created to its start: for a deployment, the
    worker's poll, starting the process and loading the flow; for a sub-flow, nearly nothing.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: stack.state().prefect_api_url}),
        get_client(sync_client=True) as client,
    ):
        [pipeline] = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["retraining-pipeline"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(is_null_=False)),
            sort=FlowRunSort.START_TIME_DESC,
            limit=1,
        )
        children = FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline.id])
        )
        stages = {}
        for run in client.read_flow_runs(flow_run_filter=children):
            if run.start_time is None or run.end_time is None:
                continue
            stages[client.read_flow(run.flow_id).name] = {
                "seconds": round((run.end_time - run.start_time).total_seconds(), 2),
                "wait_s": round((run.start_time - run.created).total_seconds(), 2),
            }
        stages["retraining-pipeline"] = {
            "seconds": 0.0,  # the stages' parent: only its wait counts here, the rest is theirs
            "wait_s": round((pipeline.start_time - pipeline.created).total_seconds(), 2),
        }
    return stages, pipeline.name


def pipeline_metrics(stack: Stack, config: Path, run_name: str) -> dict[str, float]:
    """The test metrics the pipeline recorded on its parent MLflow run."""
    from mlflow.tracking import MlflowClient

    from prefect_mlops.mlops.config import load_config

    client = MlflowClient(tracking_uri=stack.state().mlflow_url)
    experiment = client.get_experiment_by_name(load_config(config).experiment_name)
    [run] = client.search_runs(
        [experiment.experiment_id], f"attributes.run_name = 'pipeline-{run_name}'", max_results=1
    )
    return {
        k.removeprefix("test_"): v for k, v in run.data.metrics.items() if k.startswith("test_")
    }


# ---------------------------------------------------------------- plain functions, lightgbm.train


@contextmanager
def state_folder(home: Path) -> Iterator[Path]:
    """This process's MLOPS_HOME for the block (the plain mode's datasets)."""
    os.environ["MLOPS_HOME"] = str(home)
    from prefect_mlops.mlops.settings import get_settings

    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


def run_plain(config: Any, work: Path) -> dict[str, Any]:
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
    total = {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_gb": round(memory.peak / 2**30, 2),
    }
    return {"stages": timings, "total": total, "metrics": metrics, "dataset": dataset}


def run_single_process(dataset: Any, config: Any) -> dict[str, Any]:
    """Plain ``lightgbm.train`` on the whole training split in one process (2 threads).

    Its time is the ``lgb.Dataset`` construction and the boosting, with the validation split
    scored every round as LightGBM does it; reading the splits is timed apart.
    """
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
        return lgb.train(params, train_set, rounds, valid_sets=[valid_set])

    booster = measure(timings, "train", train)
    test = read_split(dataset, "test")
    scores = booster.predict(build_features(test, dataset.feature_spec).to_numpy())
    metrics = compute_metrics(dataset.task, test["__target__"].to_numpy(), np.asarray(scores))
    return {"stages": timings, "metrics": metrics, "rounds": booster.current_iteration()}


# ---------------------------------------------------------------- one size


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run whose whole-pipeline time is the median."""
    return sorted(runs, key=lambda r: r["total"]["seconds"])[len(runs) // 2]


def benchmark_size(
    rows: int, base: Path, stack: Stack, rounds: int, repeats: int, memory_limit: str
) -> dict[str, Any]:
    from prefect_mlops.mlops.config import parse_config
    from prefect_mlops.mlops.synthetic import write_dataset

    print(f"\n== {rows:,} rows", flush=True)
    source = base / f"fraud-{rows}.parquet"
    result: dict[str, Any] = {"rows": rows, "rounds": rounds, "repeats": repeats, "generate": {}}
    measure(result["generate"], "generate", lambda: write_dataset("fraud", rows, source, seed=1))
    result["source_mb"] = round(source.stat().st_size / 2**20, 1)
    raw = benchmark_config(source, rounds, memory_limit)

    print("  warm-up (one process; not counted: it registers the first champion)", flush=True)
    run_command(stack, "one-process", config_file(base, source, raw, f"{rows}-warm-up"))
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for attempt in range(repeats):  # alternate the modes so drift on the machine hits both alike
        for mode in MODES:
            config = config_file(base, source, raw, f"{rows}-{mode}-{attempt}")
            runs[mode].append(run_command(stack, mode, config))
    for mode in MODES:
        result[mode] = median_run(runs[mode])
        result[f"{mode} totals"] = [r["total"]["seconds"] for r in runs[mode]]

    print("  plain functions:", flush=True)
    plain_config = parse_config(
        raw | {"data": raw["data"] | {"source": str(source)}}, origin="benchmark"
    )
    with state_folder(base / f"plain-{rows}"):
        plain = run_plain(plain_config, base / f"plain-{rows}")
    result["plain"] = {k: plain[k] for k in ("stages", "total", "metrics")}
    print("  lightgbm.train alone:", flush=True)
    result["lightgbm.train"] = run_single_process(plain["dataset"], plain_config)
    for path in base.glob(f"fraud-{rows}*"):
        path.unlink()
    return result


def ratios(result: dict[str, Any]) -> dict[str, float]:
    one = result["one-process"]["total"]["seconds"]
    return {
        "stack / one process": result["stack"]["total"]["seconds"] / one,
        "one process / lightgbm.train": one
        / result["lightgbm.train"]["stages"]["train"]["seconds"],
        "plain / lightgbm.train": result["plain"]["total"]["seconds"]
        / result["lightgbm.train"]["stages"]["train"]["seconds"],
    }


# ---------------------------------------------------------------- the report


def verdict(name: str, rows: int, value: float) -> str:
    target = TARGETS.get(name, {}).get(rows)
    if target is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({'met' if value <= target else 'missed'}: <= {target})"


def seconds(stage: dict[str, Any], key: str = "seconds") -> str:
    """A stage's figure for the table, or a dash for a stage the run did not have."""
    return f"{stage[key]:.1f}" if key in stage else "-"


def between_stages(run: dict[str, Any]) -> float:
    """A command's wall time outside its stages' runs and the waits before them."""
    inside = sum(s["seconds"] + s["wait_s"] for s in run["stages"].values())
    return run["total"]["seconds"] - inside


def render(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    sizes = " ".join(str(r["rows"]) for r in results)
    lines = [
        BEGIN,
        f"Measured {machine['date']} on {machine['cores']} cores, {machine['memory_gb']} GB RAM, "
        f"Python {machine['python']}, by `python benchmarks/pipeline.py --rows {sizes}` "
        f"(`mlops up` took {machine['stack_up_s']:.0f} s, once). Use case: `configs/fraud_detection.yaml` "
        "(binary, ~1.6% positives; LightGBM lr 0.05, 31 leaves) on data from its generator, trained for "
        f"a fixed {results[0]['rounds']} rounds (early stopping off) on one Dask worker with 2 threads, "
        "the threads `lightgbm.train` gets (allocator off). **one process** is `mlops run --config`, "
        "**stack** is `mlops trigger --config` on the local stack (every stage a run of its own "
        "deployment, started by its pool's worker); both are commands timed from start to exit, "
        "against the same Prefect and MLflow servers, each on a new hard link of the source so "
        "nothing is a cache hit. A first one-process run, not counted, registers the champion "
        "every counted run is gated against. **plain** calls the stage functions directly (no "
        "Prefect, no MLflow, so no register, model gate or deploy). **lightgbm.train** is its "
        "dataset construction and boosting on the same split, parameters, threads and rounds. "
        "Peak memory: every process involved (the command and its Dask worker, the stack's "
        "servers, workers and stage processes), sampled every 100 ms.",
        "",
        "| rows | one process s | stack s | stack / one process | plain s | lightgbm.train s | "
        "one process / lightgbm.train | plain / lightgbm.train | peak GB (all processes) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ratio = ratios(r)
        peak = max(r["one-process"]["total"]["peak_gb"], r["stack"]["total"]["peak_gb"])
        lines.append(
            f"| {r['rows']:,} | {r['one-process']['total']['seconds']:.1f} | "
            f"{r['stack']['total']['seconds']:.1f} | "
            f"{verdict('stack / one process', r['rows'], ratio['stack / one process'])} | "
            f"{r['plain']['total']['seconds']:.1f} | "
            f"{r['lightgbm.train']['stages']['train']['seconds']:.1f} | "
            f"{verdict('one process / lightgbm.train', r['rows'], ratio['one process / lightgbm.train'])} | "
            f"{ratio['plain / lightgbm.train']:.2f} | {peak:.2f} |"
        )
    lines += [
        "",
        "Runs per size: "
        + "; ".join(
            f"{r['rows']:,} rows one process {r['one-process totals']} s, stack {r['stack totals']} s"
            for r in results
        )
        + " (the median run is shown).",
        "",
        "### Per stage (the median runs)",
        "",
        "Each stage's run time as Prefect recorded it, and in brackets the wait from its flow run "
        "being created to its start (for the stack: the worker's poll, the stage process's start "
        "and loading the flow). *pipeline flow run start* is the same wait for the pipeline's own "
        "flow run (for the stack, on the orchestrator pool's worker). *between stages* is the rest "
        "of the command's wall time: starting the command and creating the flow run, the "
        "pipeline's MLflow parent run and allocation, creating each stage's run, and for the stack "
        "noticing that a stage ended.",
        "",
        "| rows | stage | plain s | one process s | stack s (wait before start) |",
        "|---:|---|---:|---:|---:|",
    ]
    for r in results:
        for stage in STAGES:
            plain = r["plain"]["stages"].get(stage, {})
            one = r["one-process"]["stages"].get(stage, {})
            on_stack = r["stack"]["stages"].get(stage, {})
            lines.append(
                f"| {r['rows']:,} | {stage} | {seconds(plain)} | {seconds(one)} | "
                f"{seconds(on_stack)} ({seconds(on_stack, 'wait_s')}) |"
            )
        between = {mode: between_stages(r[mode]) for mode in MODES}
        lines.append(
            f"| {r['rows']:,} | *pipeline flow run start* | | "
            f"{seconds(r['one-process']['stages'].get('retraining-pipeline', {}), 'wait_s')} | "
            f"{seconds(r['stack']['stages'].get('retraining-pipeline', {}), 'wait_s')} |"
        )
        lines.append(
            f"| {r['rows']:,} | *between stages* | | {between['one-process']:.1f} | "
            f"{between['stack']:.1f} |"
        )
    lines += [
        "",
        "### Same model in every mode",
        "",
        "| rows | test ROC-AUC one process | stack | plain | lightgbm.train | rounds |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        auc = [
            r[m]["metrics"].get("roc_auc", float("nan"))
            for m in ("one-process", "stack", "plain", "lightgbm.train")
        ]
        lines.append(
            f"| {r['rows']:,} | " + " | ".join(f"{a:.6f}" for a in auc) + f" | {r['rounds']} |"
        )
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000, 1_000_000, 10_000_000])
    parser.add_argument("--memory-limit", default="12GiB", help="Of the one Dask worker.")
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
    os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"  # plain stage tasks
    from prefect_mlops.infra.environment import configure_environment
    from prefect_mlops.mlops.settings import Settings

    configure_environment(Settings(home=base / "plain"))
    machine = {
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    stack = Stack(base / "stack")
    try:
        machine["stack_up_s"] = round(stack.up(), 1)
        results = [
            benchmark_size(
                rows,
                base,
                stack,
                args.rounds,
                args.repeat if rows <= 2_000_000 else 1,
                args.memory_limit,
            )
            for rows in args.rows
        ]
    finally:
        stack.down()
    for r in results:
        r["ratios"] = ratios(r)
    args.json.write_text(
        json.dumps({"machine": machine, "results": results}, indent=2, default=str)
    )
    section = render(results, machine)
    print("\n" + section)
    if not args.no_doc:
        write_section("pipeline", "Pipeline", section)
    shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
