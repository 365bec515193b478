"""Foreign run logs: importing them, machine types and prices, scaling curves, described jobs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from prefect_mlops.infra.allocator.history import (
    HistoryError,
    HistoryStore,
    JobFeatures,
    RunProfile,
)
from prefect_mlops.infra.allocator.machines import (
    Catalogue,
    CatalogueError,
    Machine,
    catalogue_for,
    default_catalogue,
    load_catalogue,
)
from prefect_mlops.infra.allocator.planner import describe_job
from prefect_mlops.infra.allocator.recommend import learned_gpu_speedup, recommend_allocation
from prefect_mlops.infra.allocator.resources import machine_shapes, node_counts
from prefect_mlops.infra.allocator.run_logs import export_history, import_history
from prefect_mlops.mlops.errors import ConfigError

MLOPS = str(Path(sys.executable).parent / "mlops")
GIB = 2**30
CATALOGUE = default_catalogue()


def spark_log(path: Path, changes: dict | None = None) -> Path:
    """A cluster's own log with its own extra columns and gaps, as a team would export it."""
    frame = pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3", "r4"],
            "use_case": ["grep", "grep", "grep", "sort"],
            "dataset_version": ["15gb", "15gb", "15gb", "30gb"],
            "family": ["spark"] * 4,
            "machine_type": ["c4.2xlarge", "c4.2xlarge", "m4.large", "m4.large"],
            "workers": [2, 6, 4, 4],
            "status": ["success", "success", "failed", "timeout"],
            "wall_time_s": [410.0, 160.5, 12.0, 7200.0],
            "bytes_in_memory": [15e9, 15e9, None, 30e9],
            "spark.executor.memory": ["12g", "12g", "6g", "6g"],
            "queue": ["etl", "etl", "etl", "adhoc"],
        }
    )
    frame = frame.astype(object)
    for (row, column), value in (changes or {}).items():
        frame.loc[row, column] = value
    frame.to_csv(path, index=False)
    return path


def test_a_foreign_log_imports_with_unknowns_left_unknown_and_its_columns_kept(tmp_path):
    store = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}")
    assert import_history(store, spark_log(tmp_path / "log.csv"), CATALOGUE) == 4
    runs = {r.run_id: r for r in store.runs()}
    first = runs["r1"]
    assert first.machine_type == "c4.2xlarge" and first.threads_per_worker == 8
    assert first.memory_per_worker_bytes == int(15 * GIB) and first.gpu is False
    assert first.peak_memory_bytes is None and first.startup_s is None  # unknown, not 0
    assert first.host_cpus is None and first.iterations is None and first.n_rows is None
    assert first.params == {"spark.executor.memory": "12g", "queue": "etl"}
    assert first.source == "import" and first.shape.label() == "2 x c4.2xlarge"
    assert runs["r3"].bytes_in_memory is None and runs["r4"].status == "timeout"

    export_history(store, tmp_path / "out.csv")  # and back: params and machine type survive
    again = HistoryStore(f"sqlite:///{tmp_path / 'again.db'}")
    import_history(again, tmp_path / "out.csv", CATALOGUE)
    assert {r.run_id: r.params for r in again.runs()} == {k: r.params for k, r in runs.items()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({(2, "machine_type"): "z9.huge"}, r"row 3: field 'machine_type' 'z9.huge' is not in"),
        ({(1, "wall_time_s"): -5.0}, r"row 2: field 'wall_time_s' input should be greater"),
        ({(3, "run_id"): "r1"}, r"row 4: field 'run_id' 'r1' repeats row 1"),
        ({(0, "workers"): "two"}, r"row 1: field 'workers' input should be a valid integer"),
        ({(0, "status"): "exploded"}, r"row 1: field 'status'"),
    ],
)
def test_a_bad_row_is_refused_naming_file_row_and_field_and_nothing_is_written(
    tmp_path, database_url, change, message
):
    store = HistoryStore(database_url())
    with pytest.raises(HistoryError, match=r"log.csv, " + message + r".*Nothing was imported"):
        import_history(store, spark_log(tmp_path / "log.csv", change), CATALOGUE)
    assert store.runs() == []


def test_a_zero_peak_is_refused_with_a_hint_and_required_columns_are_named(tmp_path):
    store = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}")
    path = spark_log(tmp_path / "log.csv")
    frame = pd.read_csv(path).assign(peak_memory_bytes=[0, None, None, None])
    frame.to_csv(path, index=False)
    with pytest.raises(HistoryError, match="row 1: field 'peak_memory_bytes'.*leave it empty"):
        import_history(store, path, CATALOGUE)
    frame.drop(columns=["peak_memory_bytes", "wall_time_s"]).to_csv(path, index=False)
    with pytest.raises(HistoryError, match=r"required column\(s\) \['wall_time_s'\] missing"):
        import_history(store, path, CATALOGUE)
    assert store.runs() == []


def test_a_log_without_run_ids_cannot_be_imported_twice_and_odd_cells_are_kept(tmp_path):
    store = HistoryStore(f"sqlite:///{tmp_path / 'h.db'}")
    frame = pd.read_csv(spark_log(tmp_path / "log.csv")).drop(columns=["run_id"])
    frame["started"] = pd.to_datetime(["2026-01-01 10:00"] * 4)
    frame["stages"] = [[1, 2], [3], [], [4]]
    frame["ratio"] = [float("inf"), 1.5, 2.0, 0.5]
    frame.to_parquet(tmp_path / "log.parquet", index=False)
    assert import_history(store, tmp_path / "log.parquet", CATALOGUE) == 4
    kept = next(r for r in store.runs() if r.wall_time_s == 410.0).params
    assert kept["started"].startswith("2026-01-01T10:00") and kept["stages"] == [1, 2]
    assert kept["ratio"] == "inf"
    assert all(r.run_id.startswith("import-") for r in store.runs())  # derived from the row
    with pytest.raises(HistoryError, match="row 1: field 'run_id'.*already in the history"):
        import_history(store, tmp_path / "log.parquet", CATALOGUE)
    assert len(store.runs()) == 4


def test_a_history_written_by_the_previous_version_is_read_and_gains_the_new_columns(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # the previous version's table, with one success row
        connection.execute(
            sa.text(
                "CREATE TABLE allocator_runs (run_id VARCHAR(128) PRIMARY KEY, use_case "
                "VARCHAR(128), dataset_version VARCHAR(128), recorded_at DATETIME, source "
                "VARCHAR(128), workers BIGINT, threads_per_worker BIGINT, "
                "memory_per_worker_bytes BIGINT, gpu BOOLEAN, backend VARCHAR(32), host_cpus "
                "BIGINT, status VARCHAR(32), startup_s FLOAT, wall_time_s FLOAT, iterations "
                "BIGINT, peak_memory_bytes BIGINT, n_rows BIGINT)"
            )
        )
        connection.execute(
            sa.text(
                "INSERT INTO allocator_runs VALUES ('old1', 'houses', 'v1', "
                "'2026-11-01 10:00:00', 'pipeline', 2, 1, 2147483648, 0, 'local', 2, "
                "'success', 1.5, 30.0, 80, 0, 5000)"
            )
        )
    engine.dispose()
    store = HistoryStore(url)
    (old,) = store.runs()
    assert old.peak_memory_bytes is None  # the previous version's 0 meant "not measured"
    assert old.machine_type is None and old.params == {} and old.total_time_s == 31.5
    store.record(old.model_copy(update={"run_id": "new1", "machine_type": "m4.large"}))
    assert {r.run_id for r in store.runs()} == {"old1", "new1"}


# ---------------------------------------------------------------- curves and predictors


def run(job: str, context: str, size: float, machine: str, nodes: int, seconds: float, **kw):
    return RunProfile(
        use_case=job,
        dataset_version=context,
        family=kw.pop("family", "spark"),
        bytes_in_memory=int(size),
        status=kw.pop("status", "success"),
        wall_time_s=seconds,
        **CATALOGUE.shape(machine, nodes).model_dump(),
        **kw,
    )


def cliff(nodes: int, size: float) -> float:
    """A job that spills below 8 GiB of cluster memory per GB of input: 2 to 10x slower."""
    memory = nodes * 8.0  # m4.large
    seconds = 100 * size / 1e9 / nodes + 20
    return seconds * (6.0 if memory < 8 * size / 1e9 else 1.0)


def test_the_jobs_own_curve_with_a_memory_cliff_overrides_the_prior(tmp_path):
    counts = (2, 4, 6, 8)
    history = [run("etl", "small", 3e9, "m4.large", n, cliff(n, 3e9)) for n in counts]
    history += [  # other jobs scale smoothly: alone, they would say "fewest nodes"
        run(f"other{i}", "x", 3e9 * (i + 1), "m4.large", n, 50 * (i + 1) / n + 5)
        for i in range(4)
        for n in counts
    ]
    job = JobFeatures(name="etl", context="small-again", family="spark", bytes_in_memory=3e9)
    shapes = [CATALOGUE.shape("m4.large", n) for n in counts]
    allocation = recommend_allocation(job, history, shapes, catalogue=CATALOGUE)
    assert allocation.workers == 4  # 2 nodes are past the cliff (6x slower), 4 are the cheapest
    assert allocation.predictor.startswith("same-job")
    measured = recommend_allocation(
        job.model_copy(update={"context": "small"}), history, shapes, catalogue=CATALOGUE
    )
    assert measured.predictor == "measured" and measured.workers == 4
    assert measured.predicted_wall_time_s == pytest.approx(cliff(4, 3e9))


def test_leave_one_out_ranks_the_predictor_that_moves_the_cliff_with_the_input_first():
    counts = (4, 8, 12, 16)
    history = [
        run(f"job{j}", ctx, size, "m4.large", n, cliff(n, size))
        for j in range(4)
        for ctx, size in (("a", (j + 2) * 1e9), ("b", (j + 2) * 2e9))
        for n in counts
    ]
    job = JobFeatures(name="job0", context="c", family="spark", bytes_in_memory=int(8e9))
    shapes = [CATALOGUE.shape("m4.large", n) for n in counts]
    allocation = recommend_allocation(job, history, shapes, catalogue=CATALOGUE)
    ranking = next(line for line in allocation.rationale if line.startswith("Predictors"))
    # job0's own inputs never spilled on 4+ nodes; the other jobs' curves, compared at the same
    # input per node, show where 8 GB does
    assert ranking.split(": ", 1)[1].startswith("neighbours-per-node"), ranking
    true_cost = {n: cliff(n, 8e9) * n for n in counts}  # 4 nodes spill; 8 are the cheapest
    assert true_cost[allocation.workers] <= 1.1 * min(true_cost.values()), allocation.workers


def test_a_failed_run_of_this_job_on_a_shape_rules_it_out():
    counts = (2, 4)
    history = [
        run("etl", "v1", 3e9, "m4.large", 2, 5.0, status="failed"),
        run("etl", "v1", 3e9, "m4.large", 4, 100.0),
    ]
    job = JobFeatures(name="etl", context="v1", family="spark", bytes_in_memory=int(3e9))
    shapes = [CATALOGUE.shape("m4.large", n) for n in counts]
    allocation = recommend_allocation(job, history, shapes, catalogue=CATALOGUE)
    assert allocation.workers == 4
    assert any(
        "failed on 2 x m4.large before" in (c.excluded or "") for c in allocation.alternatives
    )


def test_other_families_with_peaks_zero_times_and_mixed_size_kinds_are_planned():
    counts = (2, 4)
    history = [
        run("etl", "v1", 3e9, "m4.large", n, 100.0 / n, peak_memory_bytes=2 * GIB)
        for n in counts
    ] + [
        run("etl", "v2", 6e9, "m4.large", 2, 0.0, status="failed"),  # logged as 0 s
        RunProfile(  # a job known by rows only, beside jobs known by bytes
            use_case="gbm", n_rows=10**6, status="success", wall_time_s=30.0,
            **CATALOGUE.shape("m4.large", 2).model_dump(),
        ),
    ]  # fmt: skip
    shapes = [CATALOGUE.shape("m4.large", n) for n in counts]
    for job in (
        JobFeatures(name="etl", context="v2", family="spark", bytes_in_memory=int(6e9)),
        JobFeatures(name="new", family="spark", bytes_in_memory=int(1e9)),
        JobFeatures(name="gbm2", n_rows=10**7),
    ):
        allocation = recommend_allocation(job, history, shapes, catalogue=CATALOGUE)
        assert allocation.predicted_peak_memory_bytes is None  # Spark memory is not modelled
        assert math.isfinite(allocation.predicted_wall_time_s) and allocation.workers in counts
    first = history[0]
    bigger = first.model_copy(update={"bytes_in_memory": 10**10})
    assert bigger.job.bytes_in_memory == 10**10 and first.job.bytes_in_memory == int(3e9)


def lightgbm_job(name: str, rows: int) -> JobFeatures:
    return JobFeatures(
        name=name,
        context="v1",
        family="lightgbm",
        n_rows=rows,
        n_features=20,
        bytes_in_memory=rows * 20 * 8,
        n_estimators=100,
        num_leaves=31,
        max_bin=255,
        early_stopping_rounds=0,
    )


def test_a_measured_success_overrides_the_predicted_memory_filter():
    job = lightgbm_job("big", 2_000_000)  # 320 MB: the prior's rule wants ~1.4 GiB per worker
    small = CATALOGUE.shape("c4.large", 1).model_copy(
        update={"machine_type": None, "memory_per_worker_bytes": GIB, "threads_per_worker": 1}
    )
    unproven = recommend_allocation(job, [], [small])
    assert "risks running out of memory" in " ".join(unproven.rationale)
    ran = RunProfile(**job.model_dump(), **small.model_dump(), status="success", wall_time_s=60.0)
    proven = recommend_allocation(job, [ran], [small])
    assert not any("risks running out of memory" in line for line in proven.rationale)


def test_gpu_or_cpu_machine_by_measured_curves_and_prices():
    def timings(tool: str, cpu_s: float, gpu_s: float) -> list[RunProfile]:
        return [
            run(tool, str(rows), rows, machine, 1, seconds * rows / 1e6, family="gbm")
            for rows in (1e5, 1e6, 1e7)
            for machine, seconds in (("r4.8xlarge", cpu_s), ("p3.2xlarge", gpu_s))
        ]

    history = timings("xgboost", 10.0, 2.0) + timings("catboost", 10.0, 8.0)
    shapes = [CATALOGUE.shape("r4.8xlarge", 1), CATALOGUE.shape("p3.2xlarge", 1)]
    for tool, gpu_wins in (("xgboost", True), ("catboost", False)):
        job = JobFeatures(name=tool, context="3e6", family="gbm", n_rows=3_000_000)
        allocation = recommend_allocation(job, history, shapes, catalogue=CATALOGUE)
        assert allocation.gpu is gpu_wins, allocation.rationale  # 5x pays for 1.4x the price
    pricey = CATALOGUE.merged(
        Catalogue([Machine(name="p3.2xlarge", vcpus=8, memory_gib=61, gpus=1, price_per_hour=20)])
    )
    job = JobFeatures(name="xgboost", context="3e6", family="gbm", n_rows=3_000_000)
    assert recommend_allocation(job, history, shapes, catalogue=pricey).gpu is False


def test_the_gpu_speed_up_is_learned_as_a_function_of_the_work():
    from prefect_mlops.infra.allocator.model import fit_model

    def gpu_run(rows: int, speedup: float) -> RunProfile:
        job = lightgbm_job(f"j{rows}", rows)
        shape = CATALOGUE.shape("c4.large", 1).model_copy(
            update={"machine_type": None, "gpu": True, "threads_per_worker": 2}
        )
        cpu = model.base_prediction(job, shape.model_copy(update={"gpu": False})).time_s
        return RunProfile(
            **job.model_dump(), **shape.model_dump(), status="success", wall_time_s=cpu / speedup
        )

    model = fit_model([], None)
    runs = [gpu_run(rows, s) for rows, s in ((10**4, 1.0), (10**5, 2.0), (10**6, 4.0))]
    small, _ = learned_gpu_speedup(lightgbm_job("a", 20_000), model, runs, 1.5)
    large, used = learned_gpu_speedup(lightgbm_job("b", 800_000), model, runs, 1.5)
    assert used == 3 and 1.0 <= small < 2.0 < large <= 4.0


# ---------------------------------------------------------------- catalogue and candidates


def test_the_catalogue_file_extends_the_built_in_one_and_bad_entries_are_named(tmp_path):
    (tmp_path / "m.csv").write_text(
        "name,vcpus,memory_gib,gpus,price_per_hour\nonprem.big,64,512,0,1.1\nc4.large,2,3.75,0,0.05\n"
    )
    catalogue = catalogue_for(tmp_path / "m.csv")
    assert catalogue.get("onprem.big").memory_bytes == 512 * GIB
    assert catalogue.get("c4.large").price_per_hour == 0.05  # overridden
    assert catalogue.get("r4.large").vcpus == 2  # built-in kept
    (tmp_path / "m.yaml").write_text("machines:\n  - {name: gpu.box, vcpus: 8, memory_gib: -1}\n")
    with pytest.raises(CatalogueError, match=r"m.yaml, entry 1: field 'memory_gib'"):
        load_catalogue(tmp_path / "m.yaml")
    with pytest.raises(CatalogueError, match="Unknown machine type 'nope'.*c4.large"):
        machine_shapes(catalogue, ["c4.large", "nope"], [1, 2])
    shapes = machine_shapes(catalogue, ["c4.large", "onprem.big"], node_counts(None, 4, 6))
    assert [s.label() for s in shapes] == [
        "4 x c4.large",
        "5 x c4.large",
        "6 x c4.large",
        "4 x onprem.big",
        "5 x onprem.big",
        "6 x onprem.big",
    ]
    assert node_counts([8, 4, 4]) == [4, 8]
    with pytest.raises(ValueError, match="between 1 and max_nodes 2"):
        node_counts(None, 5, 2)
    cost = shapes[0].workers * 0.05 / 3600 * 100
    assert catalogue.price_per_second(shapes[0]) * 100 == pytest.approx(cost)


def test_a_job_description_needs_its_size_and_names_what_is_wrong():
    with pytest.raises(ConfigError, match=r"job.json: field 'bytes' \(or 'rows'\) is required"):
        describe_job({"name": "grep"}, "job.json")
    with pytest.raises(ConfigError, match="job.json: field 'rows' Input should be"):
        describe_job({"name": "grep", "rows": "many"}, "job.json")
    with pytest.raises(ConfigError, match="field 'colour' Extra inputs"):
        describe_job({"rows": 10, "colour": "red"}, "job.json")
    with pytest.raises(ConfigError, match=r"field 'lightgbm' unknown key\(s\) \['n_rows'\]"):
        describe_job({"rows": 10, "lightgbm": {"n_rows": 5}}, "job.json")
    job = describe_job({"name": "grep", "bytes": 15_000_000_000, "params": {"q": 1}}, "x")
    assert job.size == 15e9 and job.params == {"q": 1}


def mlops(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLOPS, *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )


def test_recommend_a_described_job_from_an_imported_log_on_the_command_line(tmp_path):
    imported = mlops("allocator", "import", str(spark_log(tmp_path / "log.csv")), cwd=tmp_path)
    assert imported.returncode == 0 and "Imported 4 run(s)" in imported.stdout, imported.stderr
    (tmp_path / "job.json").write_text(
        json.dumps(
            {
                "name": "grep",
                "context": "15gb",
                "family": "spark",
                "bytes": 15_000_000_000,
                "candidates": {"machine_types": ["c4.2xlarge"], "nodes": [2, 6]},
            }
        )
    )
    shown = mlops("recommend", "--job", "job.json", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    allocation = json.loads(shown.stdout)
    assert allocation["machine_type"] == "c4.2xlarge" and allocation["predictor"] == "measured"
    assert allocation["workers"] == 2  # 2 x 410 s is cheaper than 6 x 160.5 s
    assert allocation["predicted_peak_memory_bytes"] is None  # not measured: not made up

    flags = mlops(
        "recommend", "--name", "wc", "--family", "spark", "--bytes", "20GB",
        "--machine-type", "m4.large", "--machine-type", "r4.large", "--nodes", "4-8",
        cwd=tmp_path,
    )  # fmt: skip
    assert flags.returncode == 0 and "# Cluster allocation" in flags.stdout, flags.stderr

    no_size = mlops("recommend", "--name", "wc", "--machine-type", "m4.large", cwd=tmp_path)
    assert no_size.returncode == 2 and "field 'bytes' (or 'rows') is required" in no_size.stderr
    unknown = mlops("recommend", "--rows", "10", "--machine-type", "z9.huge", cwd=tmp_path)
    assert unknown.returncode == 2 and "Unknown machine type 'z9.huge'" in unknown.stderr
    bad_nodes = mlops("recommend", "--rows", "10", "--nodes", "0,2", cwd=tmp_path)
    assert bad_nodes.returncode == 2 and "--nodes '0,2'" in bad_nodes.stderr
    only_candidates = mlops("recommend", "--machine-type", "m4.large", cwd=tmp_path)
    assert only_candidates.returncode == 2 and "'bytes' (or 'rows')" in only_candidates.stderr


def test_a_curve_takes_its_input_size_from_any_run_that_recorded_it():
    from prefect_mlops.infra.allocator.curves import build_curves

    failed_first = [
        run("etl", "v1", 3e9, "m4.large", 2, 50.0, status="failed").model_copy(
            update={"bytes_in_memory": None}
        ),
        run("etl", "v1", 3e9, "m4.large", 4, 100.0),
    ]
    (curve,) = build_curves(failed_first)
    assert (curve.size, curve.size_kind) == (3e9, "bytes")
    assert curve.times[2] == pytest.approx(50.0 + 400.0 / 2)  # the failure, then a re-run at 4
