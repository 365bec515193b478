"""Serving benchmark: our service against ``mlflow models serve`` on the same registered model.

In one run, on this machine, for a model of each family (LightGBM, then XGBoost):

1. trains and registers a fraud model with the pipeline (``mlops run --family``) in a temporary
   home;
2. starts ``mlflow models serve --env-manager local`` and ``mlops serve`` on loopback, one
   worker process each, on the same ``models:/`` version;
3. checks that both return the same predictions for the same 200 rows;
4. single-row requests: throughput and p50/p99 latency at a fixed concurrency (closed loop),
   then p50/p99 of both at the same offered load (open loop, 60% of MLflow's throughput);
5. 1,000-row batches: rows per second;
6. repeats 4 and 5 for a few rounds, the servers taking turns to go first, and reports medians
   (this 2-core machine is noisy: one 10-second run of MLflow varies by a third);
7. the cost of the inference log and of the access log (on the first family's model):
   ``mlops serve`` as configured by default (every request in the inference log,
   ``MLOPS_INFERENCE_LOG=parquet``, sample rate 1.0, and a JSON access-log line per request,
   ``MLOPS_SERVING_ACCESS_LOG_LEVEL=info``), a second with the access log off, and a third
   with both off, in many short runs that take turns (this machine's speed drifts over
   minutes, so long runs far apart compare the machine, not the servers), single rows and
   batches; each log's cost is the median of the turns' ratios of the server with it to the
   one without.

The load generator is a few keep-alive HTTP/1.1 connections on raw asyncio sockets (no HTTP
library in the way); its own ceiling, measured against a trivial endpoint, is reported beside
the results. Results go to ``docs/benchmarks.md`` (between markers, written by
``serving_report.py``). Run: ``python benchmarks/serving.py`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.doc_sections import write_section  # noqa: E402
from benchmarks.serving_report import NO_ACCESS_LOG, NO_LOG, report  # noqa: E402

BIN = Path(sys.executable).parent
FAMILIES = ("lightgbm", "xgboost")


# ---------------------------------------------------------------- the load generator


def http_request(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return status


async def closed_loop(port: int, request: bytes, connections: int, seconds: float) -> dict:
    """``connections`` clients each sending the next request when the last one is answered."""
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop:
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            errors += status != 200
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return _summary(latencies, errors, time.perf_counter() - began)


async def open_loop(
    port: int, request: bytes, rate: float, seconds: float, connections: int
) -> dict:
    """Requests scheduled at a fixed rate; latency counts from the scheduled time."""
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)
    began = time.perf_counter()
    queue: asyncio.Queue[float] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(began + i / rate)

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            due = queue.get_nowait()
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - due)
            errors += status != 200
        writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return _summary(latencies, errors, time.perf_counter() - began)


def _summary(latencies: list[float], errors: int, elapsed: float) -> dict:
    values = np.array(latencies) * 1000
    return {
        "requests": len(values),
        "errors": errors,
        "throughput": len(values) / elapsed,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
    }


# ---------------------------------------------------------------- the servers


def wait_until_up(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"nothing answered on port {port} within {timeout:.0f}s")


@contextmanager
def server(command: list[str], port: int, env: dict, log: Path):
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            try:
                wait_until_up(port)
            except RuntimeError:
                print(log.read_text()[-3000:], file=sys.stderr)
                raise
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def free_port() -> int:
    from tests.ports import free_port as pick

    return pick()


def train_model(work: Path, env: dict, rows: int, family: str) -> pd.DataFrame:
    """Register a fraud model of ``family`` (``bench-<family>``) with the pipeline; returns raw
    rows to score."""
    data = work / "fraud.parquet"
    subprocess.run(
        [
            BIN / "mlops",
            "generate",
            "fraud",
            "--out",
            str(data),
            "--rows",
            str(rows),
            "--seed",
            "3",
        ],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            BIN / "mlops",
            "run",
            "--data",
            str(data),
            "--target",
            "is_fraud",
            "--name",
            f"bench-{family}",
            "--family",
            family,
        ],
        env=env,
        cwd=work,
        check=True,
        capture_output=True,
    )
    # transaction_id is inferred as a row key and dropped: it is not a model input
    return pd.read_parquet(data).drop(columns=["is_fraud", "transaction_id"]).head(5000)


def split_body(frame: pd.DataFrame) -> bytes:
    from prefect_mlops.serving.client import split_payload

    return orjson.dumps({"dataframe_split": split_payload(frame)})


# ---------------------------------------------------------------- the run


def run(
    seconds: float, concurrency: int, rounds: int, families: tuple[str, ...], pairs: int = 16
) -> dict:
    results: dict = {"seconds": seconds, "concurrency": concurrency, "families": {}}
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        work = Path(tmp)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "MLFLOW_", "MLOPS_"))
        }
        env |= {
            "MLOPS_HOME": str(work / ".mlops"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{work / '.mlops' / 'mlflow.db'}",
            "MLOPS_SERVING_POLL_S": "0",
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
            "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # mlflow execs `uvicorn`
        }
        for number, family in enumerate(families):
            print(f"Training and registering the {family} model ...", flush=True)
            rows = train_model(work, env, 50_000, family)
            load = (seconds, concurrency, rounds, pairs)
            measured = serve_and_measure(work, env, rows, f"bench-{family}", load, number == 0)
            results["families"][family] = measured
            results |= measured.pop("log", {})
    return results


def serve_and_measure(
    work: Path, env: dict, rows: pd.DataFrame, name: str, load: tuple, log_cost: bool
) -> dict:
    """Both servers on the model ``name``, measured; with ``log_cost``, two more of ours (the
    access log off; both logs off) and the logs' cost too (under ``log``)."""
    seconds, concurrency, rounds, pairs = load
    ours_port, theirs_port, quiet_port = free_port(), free_port(), free_port()
    unaccessed_port = free_port()
    mlflow_cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{name}@champion"]
    mlflow_cmd += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(theirs_port), "-w", "1"]
    ours_cmd = [str(BIN / "mlops"), "serve", name, "--port", str(ours_port)]
    quiet_cmd = [str(BIN / "mlops"), "serve", name, "--port", str(quiet_port)]
    unaccessed_cmd = [str(BIN / "mlops"), "serve", name, "--port", str(unaccessed_port)]
    with (
        server(mlflow_cmd, theirs_port, env, work / f"mlflow-{name}.log"),
        server(ours_cmd, ours_port, env, work / f"ours-{name}.log") as ours,
    ):
        ports = {"mlflow": theirs_port, "ours": ours_port}
        measured = measure(rows, ports, seconds, concurrency, rounds)
        if not log_cost:
            return measured
        no_access = env | {
            "MLOPS_SERVING_ACCESS_LOG_LEVEL": "off",
            "MLOPS_INFERENCE_LOG_JOURNAL_DIR": str(work / "journal-no-access-log"),
        }
        off = no_access | {"MLOPS_INFERENCE_LOG": "off"}
        with (
            server(quiet_cmd, quiet_port, off, work / f"off-{name}.log") as quiet,
            server(unaccessed_cmd, unaccessed_port, no_access, work / f"na-{name}.log") as na,
        ):
            servers = {
                "ours": (ours_port, ours.pid),
                NO_ACCESS_LOG: (unaccessed_port, na.pid),
                NO_LOG: (quiet_port, quiet.pid),
            }
            log = {"log_cost": measure_log_cost(rows, servers, concurrency, pairs)}
        log["logged_rows"] = logged_rows(ours_port)
    log["access_lines"] = access_lines(work / f"ours-{name}.log")  # written out once it stopped
    return measured | {"log": log}


def logged_rows(port: int) -> int:
    """Rows the logging server has written out or queued (its /metrics)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    return int(families["mlops_inference_log_recorded_rows"].samples[0].value)


def access_lines(log: Path) -> int:
    """JSON access-log lines in a server's output."""
    with log.open("rb") as output:
        return sum(line.startswith(b"{") for line in output)


def compare_predictions(rows: pd.DataFrame, ports: dict[str, int]) -> dict:
    """Both servers' answers for the same 200 rows: labels equal, largest probability gap."""
    body = split_body(rows.head(200))
    answers = {}
    for name, port in ports.items():
        reply = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        if reply.status_code != 200:
            raise RuntimeError(f"{name} answered {reply.status_code}: {reply.text[:500]}")
        answers[name] = pd.DataFrame(reply.json()["predictions"])
    ours, theirs = answers["ours"], answers["mlflow"]
    return {
        "same_labels": bool(
            (ours["prediction"].astype(str) == theirs["prediction"].astype(str)).all()
        ),
        "max_probability_diff": float(np.abs(ours["probability"] - theirs["probability"]).max()),
    }


def measure(
    rows: pd.DataFrame, ports: dict[str, int], seconds: float, concurrency: int, rounds: int
) -> dict:
    """``rounds`` rounds of every measurement, the two servers alternating which goes first."""
    out: dict = {"rounds": rounds, **compare_predictions(rows, ports)}
    single = http_request("/invocations", split_body(rows.head(1)))
    batch = http_request("/invocations", split_body(rows.head(1000)))
    for port in ports.values():
        asyncio.run(closed_loop(port, single, concurrency, 2))  # warm-up
    runs: dict[str, dict[str, list[dict]]] = {
        kind: {name: [] for name in ports} for kind in ("single", "batch", "open")
    }
    for number in range(rounds):
        order = list(ports) if number % 2 == 0 else list(reversed(ports))
        for name in order:
            print(f"round {number + 1}/{rounds}, {name}: single rows, batches ...", flush=True)
            runs["single"][name].append(
                asyncio.run(closed_loop(ports[name], single, concurrency, seconds))
            )
            runs["batch"][name].append(asyncio.run(closed_loop(ports[name], batch, 2, seconds)))
        # the same offered load for both: 60% of what MLflow managed in this round
        rate = 0.6 * runs["single"]["mlflow"][-1]["throughput"]
        for name in order:
            print(
                f"round {number + 1}/{rounds}, {name}: open loop at {rate:.0f} req/s ...",
                flush=True,
            )
            result = asyncio.run(open_loop(ports[name], single, rate, seconds, concurrency))
            runs["open"][name].append(result | {"rate": rate})
    out |= runs
    ping = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n"
    out["generator_ceiling"] = asyncio.run(closed_loop(ports["ours"], ping, concurrency, 3))[
        "throughput"
    ]
    return out


def measure_log_cost(
    rows: pd.DataFrame, servers: dict[str, tuple[int, int]], concurrency: int, pairs: int = 16
) -> dict:
    """The servers (each log on or off) in short back-to-back runs taking turns, ``pairs``
    times: throughput, and the CPU seconds each server process spent per request (its threads
    included)."""
    import psutil

    requests = {
        "single": (http_request("/invocations", split_body(rows.head(1))), concurrency),
        "batch": (http_request("/invocations", split_body(rows.head(1000))), 2),
    }
    processes = {name: psutil.Process(pid) for name, (_, pid) in servers.items()}

    def cpu(name: str) -> float:
        times = processes[name].cpu_times()
        return times.user + times.system

    out: dict = {kind: {name: [] for name in servers} for kind in requests}
    for number in range(pairs):
        print(f"log cost, turn {number + 1}/{pairs} ...", flush=True)
        order = list(servers) if number % 2 == 0 else list(reversed(servers))
        for kind, (request, connections) in requests.items():
            for name in order:
                before = cpu(name)
                result = asyncio.run(closed_loop(servers[name][0], request, connections, 3))
                time.sleep(1)  # the log converts and writes in the background: count it too
                result["cpu_us"] = (cpu(name) - before) * 1e6 / max(result["requests"], 1)
                out[kind][name].append(result)
    return out


def write_doc(section: str) -> None:
    write_section("serving", "Serving", section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="Length of each measurement.")
    parser.add_argument("--concurrency", type=int, default=8, help="Connections of the load.")
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of every measurement.")
    parser.add_argument(
        "--family", action="append", choices=FAMILIES, help="Model families (default: both)."
    )
    parser.add_argument("--pairs", type=int, default=16, help="Turns of the logs' cost runs.")
    args = parser.parse_args()
    families = tuple(args.family or FAMILIES)
    measured = run(args.seconds, args.concurrency, args.rounds, families, args.pairs)
    section = report(measured)
    write_doc(section)
    print(section)


if __name__ == "__main__":
    main()
