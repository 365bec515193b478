"""The MLflow server's sign-in check: MLflow's basic auth, minus two holes found in it.

``infra.mlflow_server`` names :func:`authenticate` as the basic-auth app's
``authorization_function``. It runs MLflow's own check and refuses two requests that check lets
through (both measured in ``tests/reliability/test_security.py``):

- **Experiments outside the artifact root.** Any signed-in user, even one with only READ
  permission, may create an experiment with any ``artifact_location`` and then upload files into
  its runs: the server writes wherever its process may. An experiment's location must lie under
  the server's default artifact root (``--default-artifact-root``, e.g. ``mlflow-artifacts:/``
  with proxied artifacts): anything else is 403, for the admin too.
- **Other authorization schemes.** A ``Bearer``/``Digest``/... header reaches MLflow's
  credentials cache with no password and the request ends in a 500; here it is a 401.

This module is imported only by the MLflow server process (MLflow's auth app imports it).
"""

from __future__ import annotations

import json
import os
from typing import Any

from prefect_mlops.mlops.uris import location_within

ARTIFACT_ROOT_VARIABLE = "_MLFLOW_SERVER_ARTIFACT_ROOT"
"""Where ``mlflow server`` tells its workers the default artifact root is."""
CREATE_EXPERIMENT = "/mlflow/experiments/create"


def authenticate() -> Any:
    """MLflow's basic-auth check, then the refusals above (a Flask request context is active)."""
    from flask import request
    from mlflow.server.auth import (
        authenticate_request_basic_auth,
        make_basic_auth_response,
        make_forbidden_response,
    )

    credentials = request.authorization
    if (
        credentials is None
        or credentials.type != "basic"
        or not credentials.username
        or credentials.password is None
    ):
        return make_basic_auth_response()
    answer = authenticate_request_basic_auth()
    if request.method == "POST" and request.path.endswith(CREATE_EXPERIMENT):
        location = _artifact_location(request.get_json(silent=True))
        root = os.environ.get(ARTIFACT_ROOT_VARIABLE, "")
        if location and not location_within(location, root):
            return make_forbidden_response()
    return answer


def _artifact_location(body: Any) -> str | None:
    """The ``artifact_location`` of a create-experiment body, parsed as MLflow parses it
    (it also takes a JSON string holding the JSON object)."""
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return None
    location = body.get("artifact_location") if isinstance(body, dict) else None
    return str(location) if location else None
