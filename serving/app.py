"""The HTTP service: MLflow's scoring protocol, health, version and Prometheus metrics.

Every response says which model version produced it (``X-Model-Version``, once a model is
loaded), and every error is JSON in MLflow's ``{"error_code", "message"}`` shape, unknown paths
and methods included. Bad requests get a 4xx and never take the service down. What
``/invocations`` lets in is decided in :mod:`serving.admission`: once the event loop's current
turn has run, by its own work, past half the latency budget, requests get 503 with
``Retry-After`` at once; a body is read as it streams in, within a deadline (408), a size
limit (413) and a budget of body bytes held at once (503); and more requests being scored
than ``max_in_flight`` get 503 instead of queueing without bound. A small body (up to
``inline_bytes``, a few dozen rows) is scored on the event loop, where it takes well under a
millisecond and a hop to a thread would cost more than the work; a larger one is parsed and
scored in a worker thread, so the event loop keeps answering while the model predicts.

Every scored request gets an ``X-Request-Id`` (the client's, or a new one) and, when the
inference log is on, is queued for it (:mod:`serving.inference_log`); a background task
converts and journals the queue five times a second, writes it out every ``log_flush_s``
seconds, and once more at shutdown. A service started before its model exists, or whose model
failed its check (``wait_for_model``), answers 503 on ``/invocations`` and ``/ping`` until a
reload finds a good version.

Every request, whatever its path, is timed and counted for ``/metrics`` and written to the
access log by one middleware (:mod:`serving.instrumentation`); ``/metrics`` is rendered by
``prometheus_client`` from a registry of the service's own (:mod:`serving.metrics`).
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
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from prefect_mlops.mlops.errors import DataError

from .access_log import AccessLog
from .admission import BodyMemory, BodyRefused, LoopLag, read_body, too_big
from .inference_log import InferenceLog, request_id
from .instrumentation import ROWS, Instrumented
from .metrics import CONTENT_TYPE, ServiceMetrics, gauge, model_families
from .openapi import openapi_document
from .payload import PayloadError, check_rows, parse_body, predictions_body
from .served_model import ServedModel

logger = logging.getLogger(__name__)

JSON = "application/json"


@dataclass
class ServingLimits:
    """How much the service accepts at once."""

    max_body_bytes: int = 16 * 2**20
    max_in_flight: int = 64
    """Requests being scored at once (their bodies read); beyond, 503."""
    inline_bytes: int = 16 * 2**10
    """Bodies up to this size are scored on the event loop; larger ones in a worker thread."""
    body_timeout_s: float = 30.0
    """A body must be in this long after the request's headers; else 408."""
    max_body_memory_bytes: int = 256 * 2**20
    """Bytes of request bodies held at once (being received or scored); beyond, 503."""
    latency_budget_ms: float = 100.0
    """Refuse requests (503) while the event loop runs later than this (0: never)."""
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
    access_log: AccessLog | None = None
    """One line per request (:mod:`serving.access_log`); None: off."""
    reference: str = ""
    """What the service was asked to serve (e.g. ``fraud-detector``), shown while waiting."""
    loop: LoopLag = field(init=False)
    """The event loop's lag, against ``limits.latency_budget_ms``."""
    bodies: BodyMemory = field(init=False)
    """Request body bytes held, against ``limits.max_body_memory_bytes``."""

    def __post_init__(self) -> None:
        self.loop = LoopLag(self.limits.latency_budget_ms / 1000)
        self.bodies = BodyMemory(self.limits.max_body_memory_bytes)

    @property
    def version(self) -> str:
        return self.model.version if self.model else ""

    def describe(self) -> dict[str, str]:
        if self.model is None:
            return {"model": self.reference.split("@")[0].split("/")[0], "version": ""}
        return self.model.describe()


def _json(
    payload: object,
    status: int = 200,
    version: str = "",
    ident: str = "",
    headers: dict[str, str] | None = None,
) -> Response:
    headers = dict(headers or {})
    if version:
        headers["X-Model-Version"] = version
    if ident:
        headers["X-Request-Id"] = ident
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=headers)


def _error(error: PayloadError, version: str, ident: str = "") -> Response:
    body = {"error_code": error.code, "message": str(error)}
    headers = {}
    if isinstance(error, BodyRefused):  # the client may still be sending: do not read the rest
        headers["Connection"] = "close"
    if error.status == 503:
        headers["Retry-After"] = "1"
    return _json(body, error.status, version, ident, headers)


def build_app(state: ServingState, swapper=None) -> Starlette:
    """The ASGI app serving ``state.model``; ``swapper`` (a ModelSwapper) enables reloads."""

    async def invocations(request: Request) -> Response:
        model = state.model  # one version for the whole request, whatever swaps meanwhile
        if model is None or state.loop.refuses():  # refused before its body is read: cheap
            return _unavailable(model, state)
        response, rows = await _invoke(request, model, state)
        request.scope[ROWS] = rows  # for the metrics and the access log
        return response

    async def ping(_: Request) -> Response:
        if state.model is None:
            return _unavailable(None, state)
        return PlainTextResponse("\n", headers={"X-Model-Version": state.version})

    async def health(_: Request) -> Response:
        body = {
            "status": "ok" if state.model is not None else "waiting for the model",
            **state.describe(),
            "last_reload_error": state.last_error,
        }
        if state.model is not None and state.model.check_s is not None:
            body["model_check_s"] = round(state.model.check_s, 3)
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
        now = [
            gauge(
                "mlops_serving_event_loop_lag_seconds",
                "How late the event loop last ran its 10 ms timer.",
                state.loop.lag_s,
            ),
            gauge(
                "mlops_serving_body_bytes_held",
                "Bytes of request bodies held now (being received or scored).",
                state.bodies.held,
            ),
        ]
        text = state.metrics.render(
            model_families(state.describe()["model"], state.version, state.last_error),
            now,
            state.log.metric_families() if state.log is not None else (),
            state.access_log.metric_families() if state.access_log is not None else (),
        )
        headers = {"X-Model-Version": state.version} if state.version else {}
        return Response(text, media_type=CONTENT_TYPE, headers=headers)

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
        if state.access_log is not None:
            state.access_log.start()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(state.loop.watch)
            if swapper is not None and state.limits.poll_s > 0:
                tasks.start_soon(swapper.poll, state.limits.poll_s)
            if state.log is not None:
                await anyio.to_thread.run_sync(state.log.recover)
                tasks.start_soon(_write_log_every, state.log, state.limits.log_flush_s)
            yield
            tasks.cancel_scope.cancel()
        if state.log is not None:  # what queued since the last write
            await _flush_log(state.log)
            state.log.close()
        if state.access_log is not None:
            state.access_log.stop()

    async def http_error(request: Request, error: HTTPException) -> Response:
        """404, 405 and the like as MLflow's JSON error, with the model version."""
        return _json(
            _http_error_body(request, error), error.status_code, state.version, "", error.headers
        )

    async def internal_error(_: Request, error: Exception) -> Response:
        # uvicorn logs the traceback: Starlette raises the error again once this is sent
        body = {
            "error_code": "INTERNAL_ERROR",
            "message": f"The service failed on this request ({type(error).__name__}); "
            "it keeps serving, and its log has the details.",
        }
        return _json(body, 500, state.version)

    routes = [
        Route("/admin/reload", reload, methods=["POST"]),
        Route("/admin/flush-log", flush_log, methods=["POST"]),
        Route("/invocations", invocations, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    measured = Middleware(
        Instrumented,
        metrics=state.metrics,
        access_log=state.access_log,
        paths=frozenset(route.path for route in routes),
    )
    return Starlette(
        lifespan=lifespan,
        routes=routes,
        middleware=[measured],
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )


def _http_error_body(request: Request, error: HTTPException) -> dict[str, str]:
    path = request.url.path
    if error.status_code == 404:
        message = f"There is no endpoint {path}; /openapi.json lists them."
        return {"error_code": "ENDPOINT_NOT_FOUND", "message": message}
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {path}; use {allowed}."
        return {"error_code": "METHOD_NOT_ALLOWED", "message": message}
    return {"error_code": "BAD_REQUEST", "message": str(error.detail)}


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
"""How often queued log rows are converted and journaled: the most a crash can lose."""


async def _write_log_every(log: InferenceLog, every_s: float) -> None:
    last_write = time.monotonic()
    while True:
        await anyio.sleep(LOG_WORK_S)
        log.convert()  # on the loop: a few microseconds a request, and one journal append
        due = time.monotonic() - last_write >= every_s
        full = log.converted.rows >= log.rows_per_file and not log.failing
        if log.converted.rows and (due or full):
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
        waiting = f"No version of {state.describe()['model']} is loaded yet"
        reason = (
            f" (the last one tried was refused: {state.last_error})"
            if state.last_error
            else " (waiting for the alias to exist)"
        )
        error = PayloadError(503, f"{waiting}{reason}; retry later.", "NO_MODEL")
    else:
        error = PayloadError(
            503,
            "The service is busier than its latency budget of "
            f"{state.limits.latency_budget_ms:g} ms allows (MLOPS_SERVING_LATENCY_BUDGET_MS); "
            "retry after Retry-After seconds.",
            "OVERLOADED",
        )
    return _error(error, state.version)


Scored = tuple[bytes, int, dict[str, np.ndarray]]
"""A scored request: the response body, its row count and prediction columns."""


async def _invoke(
    request: Request, model: ServedModel, state: ServingState
) -> tuple[Response, int]:
    """Read, score and log one request; returns the response and how many rows it scored."""
    asked_id, skip_log = _log_headers(request.scope["headers"])
    ident = request_id(asked_id)
    limits, held = state.limits, 0
    try:
        declared = int(request.headers.get("content-length") or 0)
        if declared > limits.max_body_bytes:
            raise BodyRefused(413, too_big(declared, limits.max_body_bytes), "PAYLOAD_TOO_LARGE")
        body = await read_body(
            request.receive, limits.max_body_bytes, limits.body_timeout_s, state.bodies
        )
        held = len(body)
        content_type = request.headers.get("content-type", "")
        answer, count, outputs = await _score(body, content_type, model, state)
    except PayloadError as error:
        return _error(error, model.version, ident), 0
    except (DataError, ValueError, TypeError) as error:
        message = f"The rows could not be scored: {error}"
        return _error(PayloadError(400, message), model.version, ident), 0
    finally:
        state.bodies.give_back(held)
    if state.log is not None and not skip_log:
        state.log.record(ident, model, body, content_type, count, outputs)
    headers = {"X-Model-Version": model.version, "X-Request-Id": ident}
    return Response(answer, media_type=JSON, headers=headers), count


async def _score(body: bytes, content_type: str, model: ServedModel, state: ServingState) -> Scored:
    """Score a body that is in, as one of at most ``max_in_flight``.

    Raises:
        PayloadError: 503 when ``max_in_flight`` requests are being scored; a 4xx for the body.
    """
    if state.in_flight >= state.limits.max_in_flight:
        raise PayloadError(
            503,
            f"{state.in_flight} requests are being scored, the limit "
            "(MLOPS_SERVING_MAX_IN_FLIGHT); retry after Retry-After seconds.",
            "OVERLOADED",
        )
    state.in_flight += 1
    try:
        if len(body) <= state.limits.inline_bytes:
            return score_body(body, content_type, model)
        return await anyio.to_thread.run_sync(score_body, body, content_type, model)
    finally:
        state.in_flight -= 1


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
