"""The HTTP service: MLflow's scoring protocol, health, version and Prometheus metrics.

Every response says which model version produced it (``X-Model-Version``). Bad requests get a
JSON error with a 4xx status (MLflow's ``{"error_code", "message"}`` shape) and never take the
service down; more requests in flight than ``max_in_flight`` get 503 with ``Retry-After``
instead of queueing without bound. A small body (up to ``inline_bytes``, a few dozen rows) is
scored on the event loop, where it takes well under a millisecond and a hop to a thread would
cost more than the work; a larger one is parsed and scored in a worker thread, so the event
loop keeps answering while LightGBM predicts.

Every scored request gets an ``X-Request-Id`` (the client's, or a new one) and, when the
inference log is on, is queued for it (:mod:`serving.inference_log`); a background task writes
the queue out every ``log_flush_s`` seconds and once more at shutdown. A service started before
its model exists (``wait_for_model``) answers 503 on ``/invocations`` and ``/ping`` until a
reload finds it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import anyio
import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from mlops.errors import DataError

from .inference_log import InferenceLog, request_id
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
    log_flush_s: float = 10.0
    """Write the inference log's queue out this often."""


@dataclass
class ServingState:
    """The model being served (None until it first loads) and what the service has counted."""

    model: ServedModel | None
    limits: ServingLimits = field(default_factory=ServingLimits)
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    in_flight: int = 0
    last_error: str | None = None
    log: InferenceLog | None = None
    reference: str = ""
    """What the service was asked to serve (e.g. ``fraud-detector``), shown while waiting."""

    @property
    def version(self) -> str:
        return self.model.version if self.model else ""

    def describe(self) -> dict[str, str]:
        if self.model is None:
            return {"model": self.reference.split("@")[0].split("/")[0], "version": ""}
        return self.model.describe()


def _json(payload: object, status: int = 200, version: str = "", ident: str = "") -> Response:
    headers = {"X-Model-Version": version} if version else {}
    if ident:
        headers["X-Request-Id"] = ident
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def _error(error: PayloadError, version: str, ident: str = "") -> Response:
    body = {"error_code": error.code, "message": str(error)}
    return _json(body, error.status, version, ident)


def build_app(state: ServingState, swapper=None) -> Starlette:
    """The ASGI app serving ``state.model``; ``swapper`` (a ModelSwapper) enables reloads."""

    async def invocations(request: Request) -> Response:
        started = time.perf_counter()
        model = state.model  # one version for the whole request, whatever swaps meanwhile
        if model is None or state.in_flight >= state.limits.max_in_flight:
            state.metrics.observe("/invocations", 503, time.perf_counter() - started)
            return _unavailable(model, state)
        state.in_flight += 1
        asked_id, skip_log = _log_headers(request.scope["headers"])
        ident = request_id(asked_id)
        try:
            response, scored = await _score(request, model, state.limits, ident)
        finally:
            state.in_flight -= 1
        count = 0
        if scored is not None:
            body, content_type, count, outputs = scored
            if state.log is not None and not skip_log:
                state.log.record(ident, model, body, content_type, count, outputs)
        state.metrics.observe(
            "/invocations", response.status_code, time.perf_counter() - started, count
        )
        return response

    async def ping(_: Request) -> Response:
        status = 200 if state.model is not None else 503
        return PlainTextResponse("\n", status, headers={"X-Model-Version": state.version})

    async def health(_: Request) -> Response:
        body = {
            "status": "ok" if state.model is not None else "waiting for the model",
            **state.describe(),
            "last_reload_error": state.last_error,
        }
        if state.log is not None:
            body["inference_log"] = vars(state.log.counters)
        return _json(body, version=state.version)

    async def version(_: Request) -> Response:
        return _json(state.describe(), version=state.version)

    async def openapi(_: Request) -> Response:
        model = state.model
        if model is None:
            return _unavailable(model, state)
        document = openapi_document(model.name, model.spec, state.limits.max_body_bytes)
        return _json(document, version=model.version)

    async def metrics(_: Request) -> Response:
        text = state.metrics.render(state.describe()["model"], state.version)
        if state.log is not None:
            text += state.log.render_metrics()
        return PlainTextResponse(text, headers={"X-Model-Version": state.version})

    def authorised(request: Request, enabled: bool) -> Response | None:
        """None when the admin token is right; else the 403 (off) or 401 (wrong token)."""
        token = state.limits.admin_token
        if not enabled or not token:
            return _error(
                PayloadError(
                    403, "Admin endpoints are off: set MLOPS_SERVING_ADMIN_TOKEN.", "FORBIDDEN"
                ),
                state.version,
            )
        if request.headers.get("authorization", "") != f"Bearer {token}":
            return _error(
                PayloadError(
                    401,
                    "A valid admin token is required (Authorization: Bearer ...).",
                    "UNAUTHENTICATED",
                ),
                state.version,
            )
        return None

    async def flush_log(request: Request) -> Response:
        refused = authorised(request, state.log is not None)
        if refused is not None:
            return refused
        written = await _flush_log(state.log)
        return _json({"written": written, **vars(state.log.counters)}, version=state.version)

    async def reload(request: Request) -> Response:
        refused = authorised(request, swapper is not None)
        if refused is not None:
            return refused
        outcome = await swapper.reload()
        status = 200 if outcome.status != "failed" else 409
        body = {"status": outcome.status, "version": outcome.version, "error": outcome.error}
        return _json(body, status, state.version)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette):
        async with anyio.create_task_group() as tasks:
            if swapper is not None and state.limits.poll_s > 0:
                tasks.start_soon(swapper.poll, state.limits.poll_s)
            if state.log is not None:
                tasks.start_soon(_write_log_every, state.log, state.limits.log_flush_s)
            yield
            tasks.cancel_scope.cancel()
        if state.log is not None:  # what queued since the last write
            await _flush_log(state.log)

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/admin/reload", reload, methods=["POST"]),
            Route("/admin/flush-log", flush_log, methods=["POST"]),
            Route("/invocations", invocations, methods=["POST"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/openapi.json", openapi, methods=["GET"]),
        ],
    )


def _log_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """``X-Request-Id`` and whether ``X-Inference-Log: skip`` was sent, in one pass."""
    asked, skip = None, False
    for name, value in headers:
        if name == b"x-request-id":
            asked = value.decode("latin-1")
        elif name == b"x-inference-log":
            skip = value == b"skip"
    return asked, skip


LOG_WORK_S = 0.2
"""How often queued log rows are converted (small chunks keep each pause of the loop short)."""


async def _write_log_every(log: InferenceLog, every_s: float) -> None:
    last_write = time.monotonic()
    while True:
        await anyio.sleep(LOG_WORK_S)
        log.convert()  # on the loop: a few microseconds a request
        due = time.monotonic() - last_write >= every_s
        if log.converted.rows and (due or log.converted.rows >= log.rows_per_file):
            await _write(log)
        if due:
            last_write = time.monotonic()


async def _flush_log(log: InferenceLog) -> list[str]:
    log.convert()
    return await _write(log)


async def _write(log: InferenceLog) -> list[str]:
    taken = log.take()
    try:
        return await anyio.to_thread.run_sync(log.write, taken)
    finally:
        log.done(taken)


def _unavailable(model: ServedModel | None, state: ServingState) -> Response:
    if model is None:
        error = {
            "error_code": "NO_MODEL",
            "message": f"No version of {state.describe()['model']} is loaded yet "
            "(waiting for the alias to exist); retry later.",
        }
    else:
        error = {
            "error_code": "OVERLOADED",
            "message": "Too many requests in flight; retry shortly.",
        }
    return Response(
        orjson.dumps(error),
        status_code=503,
        media_type=JSON,
        headers={"Retry-After": "1", "X-Model-Version": state.version},
    )


Scored = tuple[bytes, str, int, dict[str, np.ndarray]]
"""A scored request: its body, content type, row count and prediction columns."""


async def _score(
    request: Request, model: ServedModel, limits: ServingLimits, ident: str
) -> tuple[Response, Scored | None]:
    try:
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_body_bytes:
            raise PayloadError(413, _too_big(declared, limits), "PAYLOAD_TOO_LARGE")
        body = await request.body()
        if len(body) > limits.max_body_bytes:
            raise PayloadError(413, _too_big(len(body), limits), "PAYLOAD_TOO_LARGE")
        content_type = request.headers.get("content-type", "")
        if len(body) <= limits.inline_bytes:
            answer, count, outputs = score_body(body, content_type, model)
        else:
            answer, count, outputs = await anyio.to_thread.run_sync(
                score_body, body, content_type, model
            )
    except PayloadError as error:
        return _error(error, model.version, ident), None
    except (DataError, ValueError, TypeError) as error:
        message = f"The rows could not be scored: {error}"
        return _error(PayloadError(400, message), model.version, ident), None
    headers = {"X-Model-Version": model.version, "X-Request-Id": ident}
    return Response(answer, media_type=JSON, headers=headers), (body, content_type, count, outputs)


def score_body(
    body: bytes, content_type: str, model: ServedModel
) -> tuple[bytes, int, dict[str, np.ndarray]]:
    """The response body for a request body, how many rows it scored, and their predictions.

    Raises:
        PayloadError: for a body the service refuses (a 4xx, with the reason).
    """
    rows = parse_body(body, content_type)
    check_rows(rows, model.spec)
    outputs = model.predict_rows(rows)
    return predictions_body(outputs), rows.count, outputs


def _too_big(size: int, limits: ServingLimits) -> str:
    return f"The body has {size} bytes; the limit is {limits.max_body_bytes} (MLOPS_SERVING_MAX_BODY_BYTES)."
