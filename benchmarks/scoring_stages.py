"""Evaluate and model-gate stage times (and profiles) on generated fraud data.

``prepare`` builds a state folder once: a dataset version, a champion (version 1) and a
registered candidate (version 2, trained with another seed), by calling the stage flows (no
deploy stage). ``time`` then runs the ``evaluate`` and ``model-gate`` stage flows on them,
timing each flow call (optionally under cProfile) and printing the gate's decision, so that two
checkouts can be compared run for run in one session::

    python benchmarks/scoring_stages.py prepare --rows 1000000 --workdir /tmp/bench
    python benchmarks/scoring_stages.py time --workdir /tmp/bench [--profile out.prof]

Every ``time`` run first removes the scores the stages keep in the artifact store, so both
stages start cold (as a pipeline on a new dataset version does); ``--warm-champion`` keeps the
champion's cached scores (a second gate on the same dataset version).
"""

from __future__ import annotations

import argparse
import cProfile
import inspect
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: another checkout can be timed


def use_home(workdir: Path) -> None:
    """Point the settings at the benchmark's state folder."""
    home = workdir / "home"
    os.environ["MLOPS_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home / 'mlflow.db'}"


def prepare(workdir: Path, rows: int, rounds: int) -> None:
    """Data, champion v1 and registered candidate v2; their references in ``refs.json``."""
    from benchmarks.pipeline import make_config
    from prefect_mlops.flows.evaluate import evaluate_flow
    from prefect_mlops.flows.preprocess import preprocess_flow
    from prefect_mlops.flows.register import register_flow
    from prefect_mlops.flows.train import train_flow
    from prefect_mlops.mlops.synthetic import write_dataset
    from prefect_mlops.tasks.tracking import experiment_for

    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / f"fraud-{rows}.parquet"
    if not source.exists():
        write_dataset("fraud", rows, source, seed=1)
    use_home(workdir)
    config = make_config(source, "6GiB", rounds)
    client, _ = experiment_for(config)
    dataset = preprocess_flow(config)
    versions = []
    for seed in (config.training.seed, config.training.seed + 1):
        seeded = config.model_copy(
            update={"training": config.training.model_copy(update={"seed": seed})}
        )
        training = train_flow(seeded, dataset)
        evaluation = evaluate_flow(seeded, dataset, training)
        versions.append((training, register_flow(seeded, dataset, training, evaluation)))
    client.set_registered_model_alias(config.model.name, "champion", versions[0][1].version)
    (workdir / "refs.json").write_text(
        json.dumps(
            {
                "source": str(source),
                "rounds": rounds,
                "dataset": dataset.model_dump(mode="json"),
                "training": versions[1][0].model_dump(mode="json"),
                "candidate": versions[1][1].model_dump(mode="json"),
            }
        )
    )


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished children (the model checks):
    less disturbed than wall time by other work on a shared machine."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def time_stages(workdir: Path, profile: Path | None, warm_champion: bool) -> dict[str, float]:
    """Wall and CPU seconds of one evaluate and one model-gate flow call (cold scores unless
    told)."""
    from prefect import flow

    from benchmarks.pipeline import make_config
    from prefect_mlops.flows.evaluate import evaluate_flow
    from prefect_mlops.flows.model_gate import model_gate_flow
    from prefect_mlops.mlops.dataset import DatasetRef
    from prefect_mlops.model_registry.registry import RegisteredVersion
    from prefect_mlops.tasks.training import TrainingResult

    refs = json.loads((workdir / "refs.json").read_text())
    use_home(workdir)
    config = make_config(Path(refs["source"]), "6GiB", refs["rounds"])
    dataset = DatasetRef.model_validate(refs["dataset"])
    training = TrainingResult.model_validate(refs["training"])
    candidate = RegisteredVersion.model_validate(refs["candidate"])
    scores = Path(dataset.uri.removeprefix("file://")) / "scores"
    if scores.exists() and not warm_champion:
        shutil.rmtree(scores)
    flow(name="warm-up")(lambda: None)()  # the Prefect API started before anything is timed
    profiler = cProfile.Profile() if profile else None
    with_evaluation = "evaluation" in inspect.signature(model_gate_flow.fn).parameters
    seconds: dict[str, float] = {}

    def timed(name: str, call):
        if profiler:
            profiler.enable()
        started, cpu = time.perf_counter(), cpu_seconds()
        value = call()
        seconds[name] = round(time.perf_counter() - started, 3)
        seconds[f"{name} cpu"] = round(cpu_seconds() - cpu, 3)
        if profiler:
            profiler.disable()
        return value

    evaluation = timed("evaluate", lambda: evaluate_flow(config, dataset, training))
    handed = {"evaluation": evaluation} if with_evaluation else {}  # as the pipeline does
    result = timed(
        "model-gate",
        lambda: model_gate_flow(config, dataset, candidate, return_state=True, **handed),
    )
    decision = result.result(raise_on_failure=False)
    checks = [
        (c.name, c.verdict, c.value if c.unit != "ms" else None) for c in decision.ledger.checks
    ]
    import prefect_mlops

    print(json.dumps({"code": prefect_mlops.__file__, "seconds": seconds}))
    print(json.dumps({"verdict": decision.verdict, "checks": checks}))
    if profiler:
        profiler.dump_stats(str(profile))
    return seconds


def main() -> None:
    import prefect_mlops  # noqa: F401 - the checkout PYTHONPATH names, before benchmarks.pipeline
    # puts this one first on sys.path

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["prepare", "time"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--warm-champion", action="store_true")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.workdir, args.rows, args.rounds)
    else:
        time_stages(args.workdir, args.profile, args.warm_champion)


if __name__ == "__main__":
    main()
