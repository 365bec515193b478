"""The allocator on hand-made histories: learning, memory safety, GPU, caps, bad input."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from prefect_mlops.infra.allocator.allocation import Objective, Pricing
from prefect_mlops.infra.allocator.history import (
    COLUMNS,
    ClusterShape,
    HistoryError,
    HistoryStore,
    JobFeatures,
    RunProfile,
)
from prefect_mlops.infra.allocator.model import fit_model
from prefect_mlops.infra.allocator.planner import plan_allocation
from prefect_mlops.infra.allocator.profiling import classify_failure
from prefect_mlops.infra.allocator.recommend import recommend_allocation
from prefect_mlops.infra.allocator.resources import Resources, candidate_shapes
from prefect_mlops.infra.allocator.run_logs import export_history, import_history
from prefect_mlops.mlops.config import AllocatorConfig, ClusterConfig, parse_config
from prefect_mlops.mlops.errors import ConfigError

GIB = 2**30
MIB = 2**20


def job(rows: int = 100_000, features: int = 20, **overrides) -> JobFeatures:
    values = {
        "n_rows": rows,
        "n_features": features,
        "n_numeric": features,
        "n_categorical": 0,
        "bytes_in_memory": rows * features * 8,
        "max_cardinality": 0,
        "mean_cardinality": 0.0,
        "sparsity": 0.0,
        "task": "binary",
        "n_classes": 2,
        "n_estimators": 100,
        "num_leaves": 31,
        "max_bin": 255,
        "learning_rate": 0.1,
        "early_stopping_rounds": 0,
    }
    return JobFeatures(**(values | overrides))


def shape(workers: int, threads: int, gib: float, gpu: bool = False) -> ClusterShape:
    return ClusterShape(
        workers=workers, threads_per_worker=threads, memory_per_worker_bytes=int(gib * GIB), gpu=gpu
    )


def world(the_job: JobFeatures, the_shape: ClusterShape) -> tuple[float, int]:
    """A made-up machine with 2 cores: threads help, a second worker costs, oversubscription hurts."""
    work = the_job.n_rows * the_job.n_features * the_job.n_estimators * 4e-9
    threads = the_shape.threads
    time_s = 1.0 + work / min(threads, 2) + 1.5 * (the_shape.workers - 1)
    time_s *= 4.0 if threads > 2 else 1.0
    if the_shape.gpu:
        time_s /= 10
    peak = 400 * MIB + 3 * the_job.bytes_in_memory // the_shape.workers
    return time_s, peak


def measured(the_job: JobFeatures, the_shape: ClusterShape, name: str, **overrides) -> RunProfile:
    time_s, peak = world(the_job, the_shape)
    oom = peak > 0.8 * the_shape.memory_per_worker_bytes
    values = {
        **the_job.model_dump(),
        **the_shape.model_dump(),
        "use_case": name,
        "dataset_version": f"v-{name}",
        "host_cpus": 2,
        "status": "out-of-memory" if oom else "success",
        "startup_s": 0.5,
        "wall_time_s": time_s * (0.3 if oom else 1.0),
        "iterations": 0 if oom else the_job.n_estimators,
        "peak_memory_bytes": None if oom else peak,
        "source": "test",
    }
    return RunProfile(**(values | overrides))


GRID = [shape(w, t, m) for w in (1, 2) for t in (1, 2) for m in (0.75, 2.0)]


def history_of(jobs: dict[str, JobFeatures]) -> list[RunProfile]:
    return [measured(j, s, name) for name, j in jobs.items() for s in GRID]


PAST = {
    f"past-{i}": job(rows, features)
    for i, (rows, features) in enumerate(
        [(20_000, 10), (50_000, 40), (150_000, 20), (300_000, 60), (80_000, 80), (400_000, 10)]
    )
}


def oracle(the_job: JobFeatures, objective: Objective) -> float:
    costs = []
    for s in GRID:
        time_s, peak = world(the_job, s)
        if peak <= 0.8 * s.memory_per_worker_bytes:
            costs.append(
                time_s if objective.kind == "time" else time_s * objective.pricing.per_second(s)
            )
    return min(costs)


@pytest.mark.parametrize("kind", ["cost", "time"])
def test_learned_picks_are_near_the_oracle_on_unseen_jobs(kind):
    objective = Objective(kind=kind)
    history = history_of(PAST)
    for new in (job(120_000, 30), job(250_000, 50), job(30_000, 15)):
        allocation = recommend_allocation(new, history, GRID, objective, cores=2)
        time_s, peak = world(new, allocation.shape)
        assert peak <= 0.8 * allocation.memory_per_worker_bytes  # never out of memory
        achieved = (
            time_s if kind == "time" else time_s * objective.pricing.per_second(allocation.shape)
        )
        assert achieved <= 1.10 * oracle(new, objective), allocation.rationale
        assert (
            allocation.threads_per_worker * allocation.workers <= 2
        )  # learned: no oversubscription
        assert allocation.confidence_label != "low"
        assert allocation.nearest_runs and allocation.alternatives


def test_predictions_learn_time_and_memory_from_history():
    model = fit_model(history_of(PAST), cores=2)
    new, target = job(200_000, 30), shape(1, 2, 2.0)
    predicted = model.base_prediction(new, target)
    time_s, peak = world(new, target)
    assert predicted.time_s == pytest.approx(time_s + 0.5, rel=0.15)  # + the 0.5 s start-up
    assert predicted.peak_memory_bytes == pytest.approx(peak, rel=0.10)


def test_empty_history_is_a_prior_with_low_confidence():
    allocation = recommend_allocation(job(), [], GRID, cores=2)
    assert allocation.confidence_label == "low"
    assert allocation.history_runs == 0
    assert any("No run history yet" in line for line in allocation.rationale)
    assert allocation.predicted_wall_time_s > 0 and allocation.predicted_peak_memory_bytes > 0


def test_out_of_memory_is_never_repeated_and_replanning_changes_shape():
    big = job(300_000, 40)  # 96 MB: the 0.75 GiB workers run out of memory in this world
    failed = measured(big, shape(1, 1, 0.75), "big", predicted_peak_memory_bytes=500 * MIB)
    assert failed.status == "out-of-memory"
    similar = job(310_000, 40)
    allocation = recommend_allocation(similar, [failed], GRID, cores=2)
    assert allocation.shape != shape(1, 1, 0.75)
    assert allocation.memory_per_worker_bytes > 0.75 * GIB or allocation.workers > 1
    excluded = [c for c in allocation.alternatives if c.excluded]
    assert any("ran out of memory" in (c.excluded or "") for c in excluded) or any(
        "ran out of memory" in line or "ruled out for memory" in line
        for line in allocation.rationale
    )


def test_gpu_only_when_it_exists_and_pays():
    history = history_of(PAST)
    cpu_only = recommend_allocation(
        job(), history, GRID, cores=2, gpu_note="no GPU on this machine"
    )
    assert not cpu_only.gpu
    assert "GPU: not considered, no GPU on this machine" in cpu_only.rationale[-1]

    with_gpu = [*GRID, shape(1, 1, 2.0, gpu=True)]
    gpu_history = history + [measured(j, shape(1, 1, 2.0, gpu=True), n) for n, j in PAST.items()]
    cheap_gpu = Objective(
        pricing=Pricing(gpu_price_ratio=2.0)
    )  # measured 10x faster, costs 2 cores
    assert recommend_allocation(job(400_000, 60), gpu_history, with_gpu, cheap_gpu, cores=2).gpu
    dear_gpu = Objective(pricing=Pricing(gpu_price_ratio=200.0))
    dear = recommend_allocation(job(400_000, 60), gpu_history, with_gpu, dear_gpu, cores=2)
    assert not dear.gpu
    assert "does not pay" in dear.rationale[-1]


def test_requests_beyond_the_machine_are_capped_with_the_reason():
    machine = Resources(max_workers=2, max_threads_per_worker=2, memory_bytes=8 * GIB)
    shapes, _ = candidate_shapes(machine, max_workers=64, max_memory_per_worker="1TiB")
    assert max(s.workers for s in shapes) == 2
    assert all(s.workers * s.memory_per_worker_bytes <= 8 * GIB for s in shapes)
    allocation = plan_allocation(
        job(), AllocatorConfig(max_workers=64), ClusterConfig(), [], machine
    )
    assert any("asked for up to 64 workers; capped at 2" in line for line in allocation.rationale)

    fixed = plan_allocation(
        job(),
        AllocatorConfig(enabled=False),
        ClusterConfig(n_workers=16, threads_per_worker=4, memory_limit="4GiB"),
        [],
        machine,
    )
    assert (fixed.workers, fixed.threads_per_worker) == (2, 2)
    assert fixed.memory_per_worker_bytes * 2 <= 8 * GIB
    assert any("capped at 2x2" in line for line in fixed.rationale)


def test_deadline_and_budget_constrain_the_pick():
    history = history_of(PAST)
    new = job(300_000, 60)
    cheapest = recommend_allocation(new, history, GRID, Objective(), cores=2)
    hurried = recommend_allocation(
        new, history, GRID, Objective(deadline_s=0.8 * cheapest.predicted_wall_time_s), cores=2
    )
    assert hurried.predicted_wall_time_s <= 0.8 * cheapest.predicted_wall_time_s
    assert hurried.predicted_cost >= cheapest.predicted_cost
    impossible = recommend_allocation(new, history, GRID, Objective(deadline_s=0.01), cores=2)
    assert any("deadline" in line for line in impossible.rationale)


# ---------------------------------------------------------------- the history store


def test_history_round_trips_through_csv_and_parquet(tmp_path, database_url):
    store = HistoryStore(database_url())
    runs = history_of({"one": job()})
    store.add_all(runs)
    for name in ("runs.csv", "runs.parquet"):
        assert export_history(store, tmp_path / name) == len(runs)
        other = HistoryStore(database_url())
        assert import_history(other, tmp_path / name) == len(runs)
        back = {r.run_id: r for r in other.runs()}
        for run in runs:
            assert back[run.run_id].model_dump(exclude={"recorded_at"}) == run.model_dump(
                exclude={"recorded_at"}
            )
    assert list(pd.read_csv(tmp_path / "runs.csv").columns) == list(COLUMNS)


def test_a_corrupt_row_names_row_and_field_and_imports_nothing(tmp_path, database_url):
    store = HistoryStore(database_url())
    source = HistoryStore(database_url())
    source.add_all(history_of({"one": job()}))
    export_history(source, tmp_path / "runs.csv")
    frame = pd.read_csv(tmp_path / "runs.csv")
    frame.loc[2, "workers"] = -3
    frame.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(
        HistoryError, match=r"bad.csv, row 3: field 'workers'.*-3.*Nothing was imported"
    ):
        import_history(store, tmp_path / "bad.csv")
    assert store.runs() == []

    frame = pd.read_csv(tmp_path / "runs.csv")
    frame.loc[0, "status"] = "exploded"
    frame.to_csv(tmp_path / "status.csv", index=False)
    with pytest.raises(HistoryError, match=r"row 1: field 'status'"):
        import_history(store, tmp_path / "status.csv")
    assert import_history(store, tmp_path / "runs.csv") == 8
    with pytest.raises(HistoryError, match="already in the history"):
        import_history(store, tmp_path / "runs.csv")  # the same runs twice: refused, not doubled
    assert len(store.runs()) == 8


def test_unknown_file_kind_and_missing_file(tmp_path):
    store = HistoryStore(f"sqlite:///{tmp_path / 'a.db'}")
    (tmp_path / "runs.json").write_text("{}")
    with pytest.raises(HistoryError, match="use a .csv or .parquet"):
        import_history(store, tmp_path / "runs.json")
    with pytest.raises(HistoryError, match="not found"):
        import_history(store, tmp_path / "nope.csv")


def test_failure_classification():
    assert (
        classify_failure(RuntimeError("x"), ["Worker exceeded 95% memory budget"])
        == "out-of-memory"
    )
    assert classify_failure(TimeoutError("slow"), []) == "timeout"
    assert classify_failure(RuntimeError("KilledWorker: lost"), []) == "killed"
    assert classify_failure(ValueError("bad parameter"), []) == "failed"


def test_allocator_config_rejects_a_bad_memory_size():
    raw = {
        "name": "x",
        "data": {"source": "x.csv", "target": "y"},
        "model": {"name": "m"},
        "training": {"allocator": {"max_memory_per_worker": "lots"}},
    }
    with pytest.raises(ConfigError, match="training.allocator.max_memory_per_worker"):
        parse_config(raw)
    assert math.isfinite(Pricing().per_second(shape(2, 2, 4.0)))


def test_every_history_column_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "allocator.md").read_text()
    missing = [c for c in COLUMNS if f"| `{c}` |" not in doc]
    assert missing == []


# ---------------------------------------------------------------- model families


def other_family(runs: list[RunProfile], family: str, slower: float) -> list[RunProfile]:
    """The same runs as another family's, each ``slower`` times as long (start-up included)."""
    return [
        r.model_copy(
            update={
                "run_id": f"{family}-{r.run_id}",
                "family": family,
                "wall_time_s": r.wall_time_s * slower,
                "startup_s": (r.startup_s or 0.0) * slower,
            }
        )
        for r in runs
    ]


def test_the_cost_model_learns_each_familys_cost_from_history():
    lightgbm = history_of(PAST)
    history = lightgbm + other_family(lightgbm, "xgboost", slower=3.0)
    model = fit_model(history, cores=2)
    new, target = job(200_000, 30), shape(1, 2, 2.0)
    as_lightgbm = model.base_prediction(new, target).time_s
    as_xgboost = model.base_prediction(new.model_copy(update={"family": "xgboost"}), target).time_s
    time_s, _ = world(new, target)
    assert as_lightgbm == pytest.approx(time_s + 0.5, rel=0.15)  # not pulled up by xgboost runs
    assert as_xgboost / as_lightgbm == pytest.approx(3.0, rel=0.1)
    alone = fit_model(lightgbm, cores=2).base_prediction(new, target).time_s
    assert as_lightgbm == pytest.approx(alone, rel=0.05)  # as if only LightGBM had run


def test_the_allocator_predicts_a_family_from_its_own_runs():
    lightgbm = history_of(PAST)
    history = lightgbm + other_family(lightgbm, "xgboost", slower=3.0)
    new = job(250_000, 50, name="new-use-case", context="v1")
    plans = {
        family: recommend_allocation(
            new.model_copy(update={"family": family}),
            history,
            GRID,
            Objective(kind="time"),
            cores=2,
        )
        for family in ("lightgbm", "xgboost")
    }
    assert plans["lightgbm"].shape == plans["xgboost"].shape  # same scaling, dearer per round
    ratio = plans["xgboost"].predicted_wall_time_s / plans["lightgbm"].predicted_wall_time_s
    assert ratio == pytest.approx(3.0, rel=0.2)
    assert "xgboost on 250,000 rows" in plans["xgboost"].rationale[0]


def test_one_use_case_trained_by_both_families_keeps_a_measured_curve_per_family():
    both = job(150_000, 20, name="fraud", context="v-fraud")
    lightgbm = [measured(both, s, "fraud") for s in GRID]
    history = history_of(PAST) + lightgbm + other_family(lightgbm, "xgboost", slower=3.0)
    plans = {
        family: recommend_allocation(
            both.model_copy(update={"family": family}),
            history,
            GRID,
            Objective(kind="time"),
            cores=2,
        )
        for family in ("lightgbm", "xgboost")
    }
    assert {p.predictor for p in plans.values()} == {"measured"}
    ratio = plans["xgboost"].predicted_wall_time_s / plans["lightgbm"].predicted_wall_time_s
    assert ratio == pytest.approx(3.0, rel=0.05)
    own = [line for line in plans["xgboost"].rationale if "past run(s)" in line]
    assert f"{len(GRID)} of this job" in own[0]  # its own family's runs, not both


def test_a_history_without_families_reads_its_boosting_runs_as_lightgbm(tmp_path):
    from pathlib import Path

    export = (
        Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "allocator_history.csv"
    )
    assert "family" not in pd.read_csv(export, nrows=1).columns  # written before families
    store = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}")
    count = import_history(store, export)
    assert {r.family for r in store.runs()} == {"lightgbm"} and count == len(store.runs())
    runs = store.runs()
    store.add_all(other_family(runs[:3], "xgboost", slower=2.0))
    assert sorted(r.family for r in store.runs()).count("xgboost") == 3
    foreign = RunProfile(
        use_case="terasort",
        workers=2,
        threads_per_worker=1,
        memory_per_worker_bytes=GIB,
        status="success",
        wall_time_s=5.0,
    )
    assert foreign.family is None  # no boosting fields: nothing to say which it was


def test_a_history_table_without_the_family_column_gains_it_without_loss(database_url):
    import sqlalchemy as sa

    from prefect_mlops.infra.allocator.history import runs_table

    url = database_url()
    engine = sa.create_engine(url)
    old = sa.MetaData()
    columns = [c.copy() for c in runs_table.columns if c.name != "family"]
    table = sa.Table(runs_table.name, old, *columns)
    old.create_all(engine)
    before = history_of({"old-use-case": job()})
    rows = [r.model_dump(exclude={"family"}) for r in before]
    with engine.begin() as connection:  # as a version before families wrote them
        connection.execute(table.insert(), rows)
    engine.dispose()

    store = HistoryStore(url)
    runs = store.runs()
    assert len(runs) == len(before) and {r.family for r in runs} == {"lightgbm"}
    assert [r.model_dump(exclude={"recorded_at", "family"}) for r in runs] == [
        r.model_dump(exclude={"recorded_at", "family"}) for r in before
    ]
    store.add_all(other_family(runs, "xgboost", slower=2.0))
    assert sorted({r.family for r in store.runs()}) == ["lightgbm", "xgboost"]
    store.close()
