"""The pre-deploy check names every variable a prefect file reads and nobody set."""

from prefect_mlops.infra.deploy_check import missing_settings, placeholders

TEXT = """
pull:
  - step: {directory: "{{ $APP_DIR }}"}
job_variables:
  image: "{{ $MLOPS_IMAGE_REPOSITORY }}/x:{{ $MLOPS_IMAGE_TAG }}"
  env: {A: "{{$MLOPS_IMAGE_TAG}}", B: "{{ $MLOPS_DASK_SCHEDULER_ADDRESS }}", C: "{{ ctx.flow_run.id }}"}
"""


def test_placeholders_are_environment_variables_only_in_order():
    assert placeholders(TEXT) == [
        "APP_DIR",
        "MLOPS_IMAGE_REPOSITORY",
        "MLOPS_IMAGE_TAG",
        "MLOPS_DASK_SCHEDULER_ADDRESS",
    ]


def test_unset_and_empty_variables_are_missing_unless_empty_means_something():
    env = {
        "PREFECT_API_URL": "http://prefect:4200/api",
        "APP_DIR": "/opt/app",
        "MLOPS_IMAGE_REPOSITORY": "",
        "MLOPS_DASK_SCHEDULER_ADDRESS": "",
    }
    assert missing_settings(TEXT, env) == ["MLOPS_IMAGE_REPOSITORY", "MLOPS_IMAGE_TAG"]
    assert missing_settings(TEXT, {}) == [
        "PREFECT_API_URL",
        "APP_DIR",
        "MLOPS_IMAGE_REPOSITORY",
        "MLOPS_IMAGE_TAG",
        "MLOPS_DASK_SCHEDULER_ADDRESS",
    ]
