"""How fast a stage process starts: imports per stage, the stack's pipeline vs ``mlops run``, polling.

Three measurements (``docs/operations.md``, "How stage processes start", has the figures):

- ``imports``: CPU and wall seconds of ``import prefect_mlops.flows.<stage>`` in a fresh
  interpreter, per stage (median of ``--repeat``), and which heavy libraries each pulls in.
- ``pipeline``: the retraining pipeline on the local stack (``mlops up`` in a fresh home, the
  pipeline deployment triggered through the API) against ``mlops run`` (stages as sub-flows in
  one process), alternating, once per checkout given with ``--project`` (each with its own
  ``.venv``; e.g. main's checkout first, then this one). Per stage run, from the Prefect API:
  created -> Running -> end, and the hand-off to the next stage.
- ``polling``: CPU seconds a Prefect server spends per minute answering ``--workers`` process
  workers that poll every N s (``--rates``), and the pipeline's checks of a stage run.

    python benchmarks/stage_start.py imports
    python benchmarks/stage_start.py pipeline --project /path/to/main --project . --rounds 3
    python benchmarks/stage_start.py polling --rates 10 2 1 0.5
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["preprocess", "data_gate", "train", "evaluate", "register", "model_gate", "deploy"]
FLOW_MODULES = [*STAGES, "monitor", "score", "retrain"]
HEAVY = [
    "great_expectations",
    "lightgbm",
    "xgboost",
    "mlflow",
    "dask",
    "distributed",
    "sklearn",
    "scipy",
    "matplotlib",
    "optuna",
    "sqlalchemy",
    "pandas",
]
PIPELINE = "retraining-pipeline/retraining-pipeline"
IMPORT_PROBE = """
import importlib, json, sys, time
w, c = time.perf_counter(), time.process_time()
importlib.import_module(sys.argv[1])
print(json.dumps({"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                  "modules": len(sys.modules),
                  "heavy": [h for h in sys.argv[2].split(",") if h in sys.modules]}))
"""


def python_of(project: Path) -> Path:
    return project / ".venv" / "bin" / "python"


# ---------------------------------------------------------------- imports


def measure_imports(project: Path, repeat: int) -> dict[str, Any]:
    """Per flow module: median CPU and wall seconds of importing it, and the heavy libraries."""
    results = {}
    for name in ["prefect", "prefect.engine", *(f"prefect_mlops.flows.{m}" for m in FLOW_MODULES)]:
        runs = []
        for _ in range(repeat):
            done = subprocess.run(
                [str(python_of(project)), "-c", IMPORT_PROBE, name, ",".join(HEAVY)],
                cwd=project,
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        results[name] = {
            "cpu": round(statistics.median(r["cpu"] for r in runs), 2),
            "wall": round(statistics.median(r["wall"] for r in runs), 2),
            "modules": runs[-1]["modules"],
            "heavy": runs[-1]["heavy"],
        }
        print(f"  {name:<36} {results[name]}", flush=True)
    return results


# ---------------------------------------------------------------- the pipeline


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def clean_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A user's shell: no PREFECT_ or MLFLOW_ variables, MLOPS_HOME set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    return env | {"MLOPS_HOME": str(home)} | (extra or {})


def mlops(project: Path, home: Path, *args: str, env: dict[str, str] | None = None, timeout=900):
    return subprocess.run(
        [str(project / ".venv" / "bin" / "mlops"), *args],
        cwd=project,
        env=clean_env(home, env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def bench_config(work: Path, rows: int) -> Path:
    """The demo use case on a file generated once, shared by every run."""
    data = work / f"fraud-{rows}.parquet"
    raw = yaml.safe_load((ROOT / "configs" / "fraud_detection.yaml").read_text())
    raw["data"]["source"] = str(data)
    raw["data"]["synthetic"] = raw["data"]["synthetic"] | {"rows": rows}
    if not data.exists():
        subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "mlops"),
                "generate",
                "fraud",
                "--out",
                str(data),
                "--rows",
                str(rows),
                "--seed",
                str(raw["data"]["synthetic"]["seed"]),
            ],
            check=True,
            capture_output=True,
        )
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def stack_pipeline(project: Path, config: Path, work: Path, env: dict[str, str]) -> dict:
    """``mlops up`` in a fresh home, one pipeline run through the API, ``mlops down``."""
    home = Path(tempfile.mkdtemp(prefix="stack-", dir=work))
    ports = {name: free_port() for name in ("prefect", "mlflow", "serving")}
    options = [x for name, port in ports.items() for x in (f"--{name}-port", str(port))]
    started = time.perf_counter()
    up = mlops(project, home, "up", *options, env=env)
    up_seconds = time.perf_counter() - started
    try:
        if up.returncode != 0:  # counted, not fatal: the next round starts a stack afresh
            print(up.stdout + up.stderr, file=sys.stderr, flush=True)
            return {"state": "mlops up failed", "up_seconds": round(up_seconds, 1)}
        time.sleep(5)  # let the workers' first polls and heartbeats pass
        api = f"http://127.0.0.1:{ports['prefect']}/api"
        result = run_through_api(api, yaml.safe_load(config.read_text()))
        result["up_seconds"] = round(up_seconds, 1)
        logs = home / "stack" / "logs"
        forked = logs / "fork-server.log"
        result["warm_starts"] = forked.read_text().count("forked pid") if forked.exists() else 0
        server_log = (logs / "prefect-server.log").read_text(errors="replace")
        result["locked_errors"] = server_log.count("database is locked")
        stalls = [int(ms) for ms in re.findall(r"\[\s*(\d+)ms\]", server_log)]
        result["stalls_over_30s"] = sum(ms >= 30_000 for ms in stalls)
        return result
    finally:
        mlops(project, home, "down", env=env, timeout=180)
        shutil.rmtree(home, ignore_errors=True)


def run_through_api(api: str, config: dict) -> dict:
    """Trigger the pipeline as the UI's Run button does; poll every 0.1 s until it is final."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(PIPELINE)
        started = time.perf_counter()
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"config": config})
        while True:
            run = client.read_flow_run(run.id)
            if run.state and run.state.is_final():
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run.id])
            )
        )
        names = {c.id: client.read_flow(c.flow_id).name for c in children}
    stages = []
    for child in sorted(children, key=lambda c: c.created):
        stages.append(timings(names[child.id], child))
    for stage, following in itertools.pairwise(stages):
        stage["handoff"] = round(following["created_at"] - stage["end_at"], 2)
    return {
        "state": run.state.name,
        "trigger_to_result": round(seconds, 1),
        "pipeline": timings("retraining-pipeline", run),
        "stages": stages,
    }


def timings(name: str, run: Any) -> dict:
    created, start, end = run.created.timestamp(), run.start_time, run.end_time
    start = start.timestamp() if start else float("nan")
    end = end.timestamp() if end else float("nan")
    return {
        "name": name,
        "created_at": created,
        "end_at": end,
        "to_running": round(start - created, 2),
        "running": round(end - start, 2),
    }


def local_run(project: Path, config: Path, work: Path) -> dict:
    """``mlops run`` in a fresh home (stages as sub-flows; its own temporary Prefect server)."""
    home = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    started = time.perf_counter()
    done = mlops(project, home, "run", "--config", str(config))
    seconds = time.perf_counter() - started
    shutil.rmtree(home, ignore_errors=True)
    found = re.search(r"Pipeline finished in (\d+)s", done.stdout)
    return {
        "state": "Completed" if done.returncode == 0 else f"exit {done.returncode}",
        "command": round(seconds, 1),
        "pipeline": int(found.group(1)) if found else None,
    }


def variant(spec: str) -> tuple[Path, dict[str, str]]:
    """``PATH`` or ``PATH::NAME=VALUE,...``: a checkout and the settings its stack runs with."""
    path, _, settings = spec.partition("::")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return Path(path).resolve(), env


def measure_pipeline(variants: list[str], rounds: int, rows: int, work: Path, local: bool) -> list:
    config = bench_config(work, rows)
    results = []
    for round_ in range(rounds):
        for spec in variants:
            project, env = variant(spec)
            for mode in ("stack", "run") if local else ("stack",):
                load = os.getloadavg()[0]
                if mode == "stack":
                    result = stack_pipeline(project, config, work, env)
                else:
                    result = local_run(project, config, work)
                result |= {"project": spec, "mode": mode, "round": round_, "load": load}
                results.append(result)
                print(json.dumps(summary(result)), flush=True)
    return results


def summary(result: dict) -> dict:
    keep = ["project", "mode", "round", "state", "trigger_to_result", "command", "pipeline"]
    out = {k: result[k] for k in keep if k in result}
    if "up_seconds" in result:
        out["up"] = result["up_seconds"]
    if "stages" in result:
        out["pipeline"] = result["pipeline"]["to_running"]
        out["stages"] = {
            s["name"]: (s["to_running"], s["running"], s.get("handoff")) for s in result["stages"]
        }
        out["warm"] = result["warm_starts"]
        out["locked"] = result["locked_errors"]
        out["stalls"] = result["stalls_over_30s"]
    out["load"] = round(result["load"], 1)
    return out


# ---------------------------------------------------------------- polling


def measure_polling(rates: list[float], workers: int, seconds: float, work: Path) -> list[dict]:
    """Server CPU per minute with ``workers`` process workers polling every ``rate`` s."""
    home = work / "polling-home"
    (home / "prefect").mkdir(parents=True, exist_ok=True)  # SQLite creates no folders
    port = free_port()
    env = clean_env(home) | {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_ENABLED": "false",
    }
    bin_dir = ROOT / ".venv" / "bin"
    sys.path.insert(0, str(ROOT))
    from prefect_mlops.infra.prefect_sqlite import sqlite_server_env

    log = work / "polling-server.log"
    server = subprocess.Popen(
        [str(bin_dir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=sqlite_server_env() | env,  # as the stack starts it
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    results = []
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/health")
        tree = psutil.Process(server.pid)
        results.append(
            {"rate": None, "workers": 0, **cpu_over(tree, seconds)} | {"what": "idle server"}
        )
        for rate in rates:
            started = [
                subprocess.Popen(
                    [
                        str(bin_dir / "prefect"),
                        "worker",
                        "start",
                        "--pool",
                        f"pool-{i}",
                        "--type",
                        "process",
                    ],
                    env=env | {"PREFECT_WORKER_QUERY_SECONDS": str(rate)},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                for i in range(workers)
            ]
            time.sleep(20)  # started, pools created, first polls done
            locked = log.read_text(errors="replace").count("database is locked")
            found = cpu_over(tree, seconds, [psutil.Process(p.pid) for p in started])
            found["locked_errors"] = (
                log.read_text(errors="replace").count("database is locked") - locked
            )
            results.append({"rate": rate, "workers": workers, **found, "what": "workers polling"})
            print(json.dumps(results[-1]), flush=True)
            for process in started:
                process.terminate()
            for process in started:
                process.wait(timeout=30)
        results.append(stage_checks(env, tree, seconds))
        print(json.dumps(results[-1]), flush=True)
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)
    return results


def stage_checks(env: dict[str, str], tree: psutil.Process, seconds: float) -> dict:
    """The pipeline's check of a stage run, every 0.25 s (in a child, for its own API URL)."""
    code = (
        "import time, uuid\n"
        "from prefect.client.orchestration import get_client\n"
        "from prefect.exceptions import ObjectNotFound\n"
        "with get_client(sync_client=True) as c:\n"
        "    while True:\n"
        "        try: c.read_flow_run(uuid.uuid4())\n"
        "        except ObjectNotFound: pass\n"
        "        time.sleep(0.25)\n"
    )
    poller = subprocess.Popen([str(ROOT / ".venv" / "bin" / "python"), "-c", code], env=env)
    time.sleep(10)
    found = cpu_over(tree, seconds)
    poller.terminate()
    poller.wait(timeout=30)
    return {"rate": 0.25, "workers": 0, **found, "what": "a pipeline checking a stage run"}


def cpu_over(server: psutil.Process, seconds: float, clients: list | None = None) -> dict:
    """CPU seconds per minute of the server's process tree (and of ``clients``) over a window."""

    def cpu(processes: list[psutil.Process]) -> float:
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total

    server_tree = [server, *server.children(recursive=True)]
    before, before_clients = cpu(server_tree), cpu(clients or [])
    time.sleep(seconds)
    scale = 60 / seconds
    return {
        "server_cpu_s_per_min": round((cpu(server_tree) - before) * scale, 2),
        "workers_cpu_s_per_min": round((cpu(clients or []) - before_clients) * scale, 2),
    }


def wait_healthy(url: str, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not healthy after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["imports", "pipeline", "polling"])
    parser.add_argument(
        "--project",
        action="append",
        help="A checkout with its .venv, optionally with settings: PATH::MLOPS_WORKER_POLL_S=2",
    )
    parser.add_argument("--no-run", action="store_true", help="Skip mlops run (stack only).")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 2, 1, 0.5])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="Write the results here too.")
    args = parser.parse_args()
    specs = args.project or [str(ROOT)]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="stage-start-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; work in {work}", flush=True)
    if args.what == "imports":
        results: Any = {s: measure_imports(variant(s)[0], args.repeat) for s in specs}
    elif args.what == "pipeline":
        results = measure_pipeline(specs, args.rounds, args.rows, work, not args.no_run)
    else:
        results = measure_polling(args.rates, args.workers, args.seconds, work)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
