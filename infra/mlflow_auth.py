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

import os
import posixpath
from typing import Any
from urllib.parse import unquote, urlparse

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
        location = (request.get_json(silent=True) or {}).get("artifact_location")
        root = os.environ.get(ARTIFACT_ROOT_VARIABLE, "")
        if location and not location_within(str(location), root):
            return make_forbidden_response()
    return answer


def location_within(location: str, root: str) -> bool:
    """Whether an artifact location lies under ``root``, however its path is spelled.

    The path is unquoted until it stops changing (``%252e`` included), and may hold no ``..``
    segment, backslash or NUL. A plain path and a ``file:`` URI are the same location.
    """
    if not root:
        return False
    target, base = _split(location), _split(root)
    if target is None or base is None:
        return False
    scheme, host, path = target
    root_scheme, root_host, root_path = base
    inside = path == root_path or path.startswith(root_path.rstrip("/") + "/")
    return (scheme, host) == (root_scheme, root_host) and inside


def _split(uri: str) -> tuple[str, str, str] | None:
    """(scheme, host, normalised path), or None for a path that tries to climb out."""
    text = uri
    for _ in range(5):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    if "\\" in text or "\x00" in text:
        return None
    parsed = urlparse(text if ":" in text.split("/")[0] else f"file://{text}")
    path = parsed.path or "/"
    if ".." in path.split("/"):
        return None
    return parsed.scheme or "file", parsed.netloc, posixpath.normpath(path)
