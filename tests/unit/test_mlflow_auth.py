"""Which experiment artifact locations the MLflow server's sign-in check lets a user create."""

from __future__ import annotations

import pytest

from infra.mlflow_auth import location_within

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
    ],
)
def test_locations_elsewhere_are_refused(location, root):
    assert not location_within(location, root)
