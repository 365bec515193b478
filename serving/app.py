"""The HTTP service: MLflow's scoring protocol, health, version and Prometheus metrics.

Every response says which model version produced it (``X-Model-Version``). Bad requests get a
JSON error with a 4xx status (MLflow's ``{"error_code", "message"}`` shape) and never take the
service down; more requests in flight than ``max_in_flight`` get 503 with ``Retry-After``
instead of queueing without bound. A small body (up to ``inline_bytes``, a few dozen rows) is
scored on the event loop, where it takes well under a millisecond and a hop to a thread would
cost more than the work; a larger one is parsed and scored in a worker thread, so the event
loop keeps answering while LightGBM predicts.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import anyio
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mlops.errors import DataError

from .loader import ServedModel
from .metrics import ServiceMetrics
from .openapi import openapi_document
from .payload import PayloadError, check_rows, parse_body, predictions_body

logger = logging.getLogger(__name__)

JSON = "application/json"


@dataclass
class ServingLimits:
    """How much the service accepts at once."""

    max_body_bytes: int = 16 * 2**20
    max_in_flight: int = 64
    inline_bytes: int = 16 * 2**10
    """Bodies up to this size are scored on the event loop; larger ones in a worker thread."""
    admin_token: str | None = None
    """Bearer token of ``POST /admin/reload``; the endpoint is off without one."""
    poll_s: float = 0.0
    """Check the alias this often as a fallback to the admin call (0: never)."""


@dataclass
class ServingState:
    """The model being served and what the service has counted."""

    model: ServedModel
    limits: ServingLimits = field(default_factory=ServingLimits)
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    in_flight: int = 0
    last_error: str | None = None


def _json(payload: object, status: int = 200, version: str = "") -> Response:
    headers = {"X-Model-Version": version} if version else None
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def _error(error: PayloadError, version: str) -> Response:
    return _json({"error_code": error.code, "message": str(error)}, error.status, version)


def build_app(state: ServingState, swapper=None) -> Starlette:
    """The ASGI app serving ``state.model``; ``swapper`` (a ModelSwapper) enables reloads."""

    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        model = state.model  # one version for the whole request, whatever swaps meanwhile
        if state.in_flight >= state.limits.max_in_flight:
            state.metrics.observe("/invocations", 503, time.perf_counter() - started)
            return Response(
                orjson.dumps(
                    {
                        "error_code": "OVERLOADED",
                        "message": "Too many requests in flight; retry shortly.",
                    }
                ),
                status_code=503,
                media_type=JSON,
                headers={"Retry-After": "1", "X-Model-Version": model.version},
            )
        state.in_flight += 1
        try:
            response, rows = await _score(request, model, state.limits)
        finally:
            state.in_flight -= 1
        state.metrics.observe(
            "/invocations", response.status_code, time.perf_counter() - started, rows
        )
        return response

    async def ping(_: Request) -> Response:
        return PlainTextResponse("\n", headers={"X-Model-Version": state.model.version})

    async def health(_: Request) -> Response:
        body = {"status": "ok", **state.model.describe(), "last_reload_error": state.last_error}
        return _json(body, version=state.model.version)

    async def version(_: Request) -> Response:
        return _json(state.model.describe(), version=state.model.version)

    async def openapi(_: Request) -> Response:
        model = state.model
        document = openapi_document(model.name, model.spec, state.limits.max_body_bytes)
        return _json(document, version=model.version)

    async def metrics(_: Request) -> Response:
        text = state.metrics.render(state.model.name, state.model.version)
        return PlainTextResponse(text, headers={"X-Model-Version": state.model.version})

    async def reload(request: Request) -> Response:
        token = state.limits.admin_token
        if swapper is None or not token:
            return _error(
                PayloadError(403, "Reloading is off: set MLOPS_SERVING_ADMIN_TOKEN.", "FORBIDDEN"),
                state.model.version,
            )
        if request.headers.get("authorization", "") != f"Bearer {token}":
            return _error(
                PayloadError(
                    401,
                    "A valid admin token is required (Authorization: Bearer ...).",
                    "UNAUTHENTICATED",
                ),
                state.model.version,
            )
        outcome = await swapper.reload()
        status = 200 if outcome.status != "failed" else 409
        body = {"status": outcome.status, "version": outcome.version, "error": outcome.error}
        return _json(body, status, state.model.version)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        async with anyio.create_task_group() as tasks:
            if swapper is not None and state.limits.poll_s > 0:
                tasks.start_soon(swapper.poll, state.limits.poll_s)
            yield
            tasks.cancel_scope.cancel()

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/admin/reload", reload, methods=["POST"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
    )


async def _score(
    request: Request, model: ServedModel, limits: ServingLimits
) -> tuple[Response, int]:
    try:
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_body_bytes:
            raise PayloadError(413, _too_big(declared, limits), "PAYLOAD_TOO_LARGE")
        body = await request.body()
        if len(body) > limits.max_body_bytes:
            raise PayloadError(413, _too_big(len(body), limits), "PAYLOAD_TOO_LARGE")
        content_type = request.headers.get("content-type", "")
        if len(body) <= limits.inline_bytes:
            answer, rows = score_body(body, content_type, model)
        else:
            answer, rows = await anyio.to_thread.run_sync(score_body, body, content_type, model)
    except PayloadError as error:
        return _error(error, model.version), 0
    except (DataError, ValueError, TypeError) as error:
        message = f"The rows could not be scored: {error}"
        return _error(PayloadError(400, message), model.version), 0
    headers = {"X-Model-Version": model.version}
    return Response(answer, media_type=JSON, headers=headers), rows


def score_body(body: bytes, content_type: str, model: ServedModel) -> tuple[bytes, int]:
    """The response body for a request body, and how many rows it scored.

    Raises:
        PayloadError: for a body the service refuses (a 4xx, with the reason).
    """
    rows = parse_body(body, content_type)
    check_rows(rows, model.spec)
    return predictions_body(model.predict_rows(rows)), rows.count


def _too_big(size: int, limits: ServingLimits) -> str:
    return f"The body has {size} bytes; the limit is {limits.max_body_bytes} (MLOPS_SERVING_MAX_BODY_BYTES)."
