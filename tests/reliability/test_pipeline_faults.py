"""The pipeline when what it writes to fails: the error says it is the environment, not the data."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from prefect_mlops.flows.retrain import retraining_pipeline_flow
from prefect_mlops.mlops.errors import StorageError
from prefect_mlops.mlops.settings import get_settings
from tests.fixtures import bundled_config, read_only_folder
from tests.reliability.figures import Figures


def test_an_unwritable_dataset_folder_fails_as_storage_not_bad_data(
    tmp_path, fraud_file, prefect_api, monkeypatch, figures: Figures
):
    """The artifact store turns read-only after the run started (no CLI pre-check helps)."""
    with read_only_folder(tmp_path / "store") as store:
        monkeypatch.setenv("MLOPS_ARTIFACT_STORE", str(store))
        get_settings.cache_clear()
        config = bundled_config("fraud_detection", fraud_file)
        state = retraining_pipeline_flow(config, return_state=True)
        try:
            state.result()
        except StorageError as error:
            raised = error
        else:
            raised = None
    uri = get_settings().resolved_tracking_uri
    client = MlflowClient(uri, registry_uri=uri)
    versions = client.search_model_versions("name = 'fraud-detector'")
    experiment = client.get_experiment_by_name("fraud-detection")
    running = (
        client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        if experiment
        else []
    )
    held = raised is not None and raised.exit_code == 1 and not versions and not running
    figures.record(
        "pipeline",
        "an unwritable artifact store mid-run",
        "the folder the dataset version is written to is read-only (immutable as root)",
        held,
        "the preprocess stage failed with a storage error (exit 1) naming the folder, not a "
        "data error; nothing registered, no MLflow run left RUNNING",
        exit_code=raised.exit_code if raised else "none",
        versions=len(versions),
        mlflow_runs_running=len(running),
    )
    assert raised is not None, state
    assert f"Writing the dataset to {store}" in str(raised)
    assert "MLOPS_ARTIFACT_STORE" in str(raised)
    assert held
