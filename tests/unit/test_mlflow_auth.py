"""Which experiment artifact locations the MLflow server's sign-in check lets a user create."""

from __future__ import annotations

import pytest

from prefect_mlops.infra.mlflow_auth import _artifact_location
from prefect_mlops.mlops.uris import location_within

PROXIED = "mlflow-artifacts:/"
LOCAL = "file:///srv/mlops/mlflow-artifacts"


@pytest.mark.parametrize(
    ("location", "root"),
    [
        ("mlflow-artifacts:/team-a", PROXIED),
        ("mlflow-artifacts:/", PROXIED),
        ("file:///srv/mlops/mlflow-artifacts/fraud-detection", LOCAL),
        ("/srv/mlops/mlflow-artifacts/fraud-detection", LOCAL),
        ("s3://bucket/mlflow/exp", "s3://bucket/mlflow"),
    ],
)
def test_locations_under_the_root_are_allowed(location, root):
    assert location_within(location, root)


@pytest.mark.parametrize(
    ("location", "root"),
    [
        ("/tmp/anywhere", PROXIED),
        ("file:///etc", PROXIED),
        ("mlflow-artifacts:/../../etc", PROXIED),
        ("mlflow-artifacts:/%2e%2e/%2e%2e/etc", PROXIED),
        ("mlflow-artifacts:/%252e%252e/etc", PROXIED),
        ("mlflow-artifacts:/a\\..\\..\\etc", PROXIED),
        ("file:///srv/mlops/mlflow-artifacts-evil/x", LOCAL),
        ("file:///srv/mlops/mlflow-artifacts/../secrets", LOCAL),
        ("s3://other-bucket/mlflow/exp", "s3://bucket/mlflow"),
        ("mlflow-artifacts:/x", ""),
        ("mlflow-artifacts://evil:80/1/models/x", "mlflow-artifacts:/1"),
        ("s3:///prefix/1/x", "s3://bucket/prefix/1"),
        ("file:///1/evil", "mlruns/1"),
    ],
)
def test_locations_elsewhere_are_refused(location, root):
    assert not location_within(location, root)


def test_a_create_experiment_body_is_read_as_mlflow_reads_it():
    assert _artifact_location({"name": "e", "artifact_location": "/tmp/x"}) == "/tmp/x"
    assert _artifact_location('{"name": "e", "artifact_location": "/tmp/x"}') == "/tmp/x"
    assert _artifact_location(["not", "an", "object"]) is None
    assert _artifact_location({"name": "e"}) is None
