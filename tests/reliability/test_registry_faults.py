"""The registry under faults: racing registrations, retried tasks, runs left open, models that
must never be loaded (corrupt, pickled, outside the store), and the audit that every version loads.

Everything is real: MLflow tracking servers on SQLite and PostgreSQL, the pipeline's own
registration and loading code, Prefect flow runs on the session's test server.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.states import Crashed

from prefect_mlops.mlops.settings import get_settings
from prefect_mlops.model_registry import tracking
from prefect_mlops.model_registry.loading import ModelStore
from prefect_mlops.model_registry.promotion import ChampionRef
from prefect_mlops.model_registry.registry import (
    CHALLENGER,
    CHAMPION,
    ModelLoadError,
    alias_version,
    register_model_version,
)
from prefect_mlops.tasks.model_gate_checks import run_model_checks
from prefect_mlops.tasks.tracking import lineage_tags, open_pipeline_run
from tests.fixtures import MODEL_DAMAGE, damaged_copy, mlflow_server, register_files
from tests.reliability.figures import Figures

REGISTRATIONS = 20
MODEL = "fraud-detector"


# ---------------------------------------------------------------- racing registrations


def register_at_once(uri: str, name: str, count: int) -> tuple[list[str], list[str]]:
    """``count`` threads register a version of a new model ``name`` at the same instant.

    Returns:
        The versions registered and the errors raised.
    """
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("race") or client.create_experiment("race")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    runs = [client.create_run(experiment_id).info.run_id for _ in range(count)]
    barrier, versions, errors = threading.Barrier(count), [], []

    def one(run_id: str) -> None:
        own = MlflowClient(uri, registry_uri=uri)  # one client per thread, as one per process
        barrier.wait()
        try:
            versions.append(
                register_model_version(own, name, f"runs:/{run_id}/m", run_id, {}).version
            )
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=one, args=(run_id,)) for run_id in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return versions, errors


def race_trials(uri: str, trials: int, caplog) -> dict[str, int]:
    """Run ``trials`` races of ``REGISTRATIONS`` threads; check each lost nothing."""
    failed = retries = 0
    for trial in range(trials):
        caplog.clear()
        name = f"race-{trial}"
        versions, errors = register_at_once(uri, name, REGISTRATIONS)
        failed += len(errors)
        retries += sum("trying again" in r.getMessage() for r in caplog.records)
        assert errors == [], errors
        assert sorted(int(v) for v in versions) == list(range(1, REGISTRATIONS + 1))
        client = MlflowClient(uri, registry_uri=uri)
        kept = client.search_model_versions(f"name = '{name}'", max_results=100)
        assert len(kept) == REGISTRATIONS  # nothing deleted behind the caller's back
        assert alias_version(client, name, CHALLENGER) in versions
    return {
        "trials": trials,
        "registrations": trials * REGISTRATIONS,
        "failed": failed,
        "alias_retries": retries,
    }


def test_twenty_registrations_at_once_keep_every_model(tmp_path, caplog, figures: Figures):
    caplog.set_level(logging.WARNING, logger="prefect_mlops.model_registry.registry")
    with mlflow_server(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path) as uri:
        numbers = race_trials(uri, 1, caplog)
    figures.record(
        "registry",
        "20 registrations at once (MLflow server on SQLite)",
        "20 threads register a version of the same new model at the same instant",
        True,
        "every registration succeeded and kept its version; lost alias races were retried",
        **numbers,
    )


@pytest.mark.long
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_hundred_racing_registrations_lose_nothing(backend, tmp_path, caplog, request, figures):
    caplog.set_level(logging.WARNING, logger="prefect_mlops.model_registry.registry")
    if backend == "postgres":
        store = request.getfixturevalue("postgres").create_database("race")
    else:
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with mlflow_server(store, tmp_path) as uri:
        numbers = race_trials(uri, 10, caplog)
    figures.record(
        "registry",
        f"200 racing registrations (MLflow server on {backend})",
        "10 trials of 20 threads registering the same new model at once (before the fix: "
        "14 of 200 failed on PostgreSQL and the project deleted their versions)",
        True,
        "0 failures, every version kept",
        **numbers,
    )


# ---------------------------------------------------------------- retried work, exactly once


def test_a_registration_retried_after_failing_twice_registers_once(tmp_path, prefect_api, figures):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("retry", artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment).info.run_id
    attempts = []

    @task(retries=2, retry_delay_seconds=0)
    def register_then_fail_twice() -> str:
        registered = register_model_version(client, "m", f"runs:/{run_id}/m", run_id, {})
        attempts.append(registered.version)
        if len(attempts) <= 2:  # the task dies after its side effect, as a lost worker would
            raise ConnectionError("injected: the connection dropped after registering")
        return registered.version

    @flow
    def register_flow() -> str:
        return register_then_fail_twice()

    version = register_flow()
    versions = client.search_model_versions("name = 'm'")
    assert attempts == ["1", "1", "1"] and version == "1"
    assert [str(v.version) for v in versions] == ["1"]
    assert alias_version(client, "m", CHALLENGER) == "1"
    figures.record(
        "registry",
        "a registration task that fails twice, then succeeds",
        "the task raises after registering, twice; Prefect retries it",
        True,
        "3 attempts, 1 version, challenger on it",
        attempts=len(attempts),
        versions=len(versions),
    )


# ---------------------------------------------------------------- runs always closed


def test_a_stage_that_fails_halfway_ends_its_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("stages", artifact_location=(tmp_path / "a").as_uri())
    opened = []
    with pytest.raises(RuntimeError, match="lost"):  # noqa: SIM117 - the run must close on exit
        with tracking.stage_run(client, experiment, "train", None, {}) as run:
            opened.append(run.run_id)
            raise RuntimeError("the tracking server was lost")
    with pytest.raises(KeyboardInterrupt):  # noqa: SIM117
        with tracking.stage_run(client, experiment, "train", None, {}) as run:
            opened.append(run.run_id)
            raise KeyboardInterrupt
    with tracking.stage_run(client, experiment, "data-gate", None, {}) as run:
        opened.append(run.run_id)
        run.status = "FAILED"  # a failed outcome that is no exception (bad data)
    failed, killed, gated = (client.get_run(r) for r in opened)
    assert failed.info.status == "FAILED"
    assert failed.data.tags["mlops.error"] == "RuntimeError: the tracking server was lost"
    assert killed.info.status == "KILLED"
    assert gated.info.status == "FAILED"


def test_a_retried_pipeline_run_opening_leaves_no_run_running(tmp_path, prefect_api, figures):
    """Each try of ``open-pipeline-run`` that fails after creating its run ends that run."""
    from tests.fixtures import bundled_config

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifact root should be: every artifact write fails")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = bundled_config("fraud_detection", tmp_path / "unused.csv")
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment(
        config.experiment_name, artifact_location=(blocker / "artifacts").as_uri()
    )
    opened = open_pipeline_run.with_options(retries=3, retry_delay_seconds=0)

    @flow(name="open-only")
    def open_only() -> str:
        return opened(config)

    with _tracking_uri(uri):
        state = open_only(return_state=True)
    runs = client.search_runs([experiment])
    statuses = sorted(r.info.status for r in runs)
    assert state.is_failed()
    assert statuses == ["FAILED"] * 4, statuses  # one run per try, each ended
    figures.record(
        "orchestration",
        "open-pipeline-run failing after creating its run, retried 3 times",
        "the experiment's artifact root is unwritable, so every try fails after its run exists",
        True,
        "every try's run ended FAILED with the error as a tag; none left RUNNING",
        tries=len(runs),
        running=sum(s == "RUNNING" for s in statuses),
    )


def test_runs_of_a_killed_flow_run_are_ended_by_the_next_pipeline(tmp_path, prefect_api, figures):
    """A SIGKILLed process runs no cleanup: the next pipeline ends what it left RUNNING."""
    from tests.fixtures import bundled_config

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = bundled_config("fraud_detection", tmp_path / "unused.csv")
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment(
        config.experiment_name, artifact_location=(tmp_path / "a").as_uri()
    )

    @flow(name="killed-stage")
    def killed_stage() -> str:
        run_id = tracking.start_run(client, experiment, "train", tags=lineage_tags(config))
        return run_id  # never closed: as if the process had been killed here

    state = killed_stage(return_state=True)
    orphan = state.result()
    with get_client(sync_client=True) as prefect:  # what crash detection does for a dead process
        prefect.set_flow_run_state(state.state_details.flow_run_id, Crashed(), force=True)
    assert client.get_run(orphan).info.status == "RUNNING"

    @flow(name="next-pipeline")
    def next_pipeline() -> str:
        return open_pipeline_run(config)

    with _tracking_uri(uri):
        started = time.monotonic()
        parent = next_pipeline()
        seconds = time.monotonic() - started
    assert client.get_run(orphan).info.status == "KILLED"
    assert "ended without closing" in client.get_run(orphan).data.tags["mlops.abandoned"]
    assert client.get_run(parent).info.status == "RUNNING"  # the new pipeline's own run
    figures.record(
        "orchestration",
        "MLflow runs of a killed flow run",
        "a stage's flow run ends Crashed with its MLflow run never closed (SIGKILL runs no cleanup)",
        True,
        "the next pipeline run ended the orphan KILLED before opening its own",
        orphans_ended=1,
        open_pipeline_run_s=round(seconds, 2),
    )


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        get_settings.cache_clear()
        try:
            yield
        finally:
            get_settings.cache_clear()


# ---------------------------------------------------------------- models never to be loaded


@pytest.fixture
def registry(served_registry) -> Iterator[dict]:
    """The served registry; its champion alias is put back after the test."""
    uri = served_registry["uri"]
    client = MlflowClient(uri, registry_uri=uri)
    champion = alias_version(client, MODEL, CHAMPION)
    with _tracking_uri(uri):
        yield served_registry | {"client": client, "store": ModelStore(client, uri)}
    client.set_registered_model_alias(MODEL, CHAMPION, champion)


def corrupted_copy(registry: dict, tmp_path: Path, how: str) -> Path:
    """The champion's files with a damaged ``model.txt`` (``tests.fixtures.damaged_copy``)."""
    return damaged_copy(registry["client"], MODEL, registry["version"], how, tmp_path / how)


@pytest.mark.parametrize("how", MODEL_DAMAGE)
def test_a_corrupt_champion_fails_the_gate_without_crashing_it(registry, tmp_path, how, figures):
    client, store = registry["client"], registry["store"]
    version = register_files(client, MODEL, corrupted_copy(registry, tmp_path, how))
    champion = ChampionRef(version=version, model_uri=f"models:/{MODEL}/{version}")
    candidate = f"models:/{MODEL}/{registry['version']}"
    started = time.monotonic()
    comparison = run_model_checks(
        registry["dataset"], candidate, champion, registry["config"].model_gate, store
    )
    seconds = time.monotonic() - started
    regression = next(c for c in comparison.checks if c.name.endswith(".no_regression"))
    assert regression.verdict == "fail"
    assert f"champion version {version} cannot score these rows" in regression.detail
    assert "crashed (SIG" in regression.detail  # SIGABRT or SIGSEGV, in the child
    figures.record(
        "registry",
        f"a corrupt champion ({how} model.txt) at the model gate",
        f"the champion's model.txt is {how.replace('-', ' ')}: LightGBM's parser aborts the "
        "process that loads it",
        True,
        "the load check's child process died (a signal); the gate process lived and failed the "
        "no-regression check naming the version",
        gate_seconds=round(seconds, 2),
    )


class WritesOnUnpickle:
    """A model whose unpickling runs code: writes the file it names."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __setstate__(self, state: dict) -> None:
        Path(state["marker"]).write_text("code from the registry ran here")
        self.__dict__.update(state)


def test_a_pickled_or_outside_model_is_refused_and_runs_nothing(registry, tmp_path, figures):
    client, store = registry["client"], registry["store"]
    marker = tmp_path / "ran.txt"
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    import cloudpickle

    (pickled / "python_model.pkl").write_bytes(cloudpickle.dumps(WritesOnUnpickle(str(marker))))
    (pickled / "MLmodel").write_text(
        "flavors: {python_function: {python_model: python_model.pkl}}\n"
    )
    pickled_version = register_files(client, MODEL, pickled)
    with pytest.raises(ModelLoadError, match="is not a pipeline model"):
        store.load(f"models:/{MODEL}/{pickled_version}")
    assert not marker.exists()

    outside = tmp_path / "outside"
    shutil.copytree(corrupted_copy(registry, tmp_path, "truncated"), outside)
    file_version = str(client.create_model_version(MODEL, outside.as_uri(), None).version)
    with pytest.raises(ModelLoadError, match="outside the artifact location"):
        store.load(f"models:/{MODEL}/{file_version}")
    figures.record(
        "registry",
        "pickled and file:// models",
        "a version holding a pickle whose __setstate__ writes a file; a version registered "
        "from a file:// folder outside the tracking store",
        True,
        "both refused before anything of them was loaded; the pickle's code did not run",
        code_ran=int(marker.exists()),
    )


def test_every_registered_version_loads_or_says_why(registry, tmp_path, figures):
    """The registry audit: each version of each model, loaded as serving would load it."""
    client, store = registry["client"], registry["store"]
    register_files(client, MODEL, corrupted_copy(registry, tmp_path, "truncated"))
    verdicts = {}
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name = '{model.name}'"):
            uri = f"models:/{model.name}/{version.version}"
            try:
                store.load(uri)
                verdicts[uri] = "loads"
            except ModelLoadError as error:
                verdicts[uri] = str(error)
    good = f"models:/{MODEL}/{registry['version']}"
    assert verdicts[good] == "loads"
    assert all(v == "loads" or "models:/" in v for v in verdicts.values())  # each names itself
    figures.record(
        "registry",
        "registry audit",
        "every version of every registered model loaded in a child process, as serving does",
        True,
        "each version either loads or is refused with a reason naming it",
        versions=len(verdicts),
        loadable=sum(v == "loads" for v in verdicts.values()),
    )


def test_the_model_check_runs_apart_from_this_process(registry, tmp_path):
    """The child process is what dies: this interpreter keeps its pid and goes on."""
    folder = corrupted_copy(registry, tmp_path, "truncated")
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect_mlops.mlops.model_check",
            str(folder),
            "a corrupt model",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    assert checked.returncode < 0, checked.stderr  # killed by a signal inside LightGBM's parser
