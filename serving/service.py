"""The serving service assembled from settings: app, model loader, hot swap and inference log.

``mlops serve`` builds it with ``build_service``, loads the first version, then runs it with
``run_service``. Everything it needs (the registry, the model check, the limits, the inference
log) comes from the settings object.
"""

from __future__ import annotations

from dataclasses import dataclass

import uvicorn
from mlflow.tracking import MlflowClient

from prefect_mlops.mlops.errors import ConfigError
from prefect_mlops.mlops.settings import Settings
from prefect_mlops.mlops.storage import artifact_store
from prefect_mlops.model_registry.loading import model_check_limits
from prefect_mlops.model_registry.registry import parse_reference
from prefect_mlops.serving.access_log import build_access_log
from prefect_mlops.serving.app import ServingLimits, ServingState, build_app
from prefect_mlops.serving.inference_log import InferenceLog, build_inference_log
from prefect_mlops.serving.loader import load_served_model
from prefect_mlops.serving.served_model import ServedModel
from prefect_mlops.serving.swap import ModelSwapper


@dataclass(frozen=True)
class ServingService:
    """One serving service: what it serves (``state``), how it swaps versions, where it logs
    (the inference log here; the access log is ``state.access_log``)."""

    state: ServingState
    swapper: ModelSwapper
    log: InferenceLog | None


def serving_limits(settings: Settings) -> ServingLimits:
    """The service's limits (body size, concurrency, latency budget, admin token) from settings."""
    return ServingLimits(
        max_body_bytes=settings.serving_max_body_bytes,
        max_in_flight=settings.serving_max_in_flight,
        body_timeout_s=settings.serving_body_timeout_s,
        max_body_memory_bytes=settings.serving_max_body_memory_bytes,
        latency_budget_ms=settings.serving_latency_budget_ms,
        admin_token=settings.serving_admin_token,
        poll_s=settings.serving_poll_s,
        log_flush_s=settings.inference_log_flush_s,
    )


def build_service(settings: Settings, model: str) -> ServingService:
    """The service for ``model`` (a registry reference), no version loaded yet.

    Args:
        settings: The process settings: tracking URI, model check, limits, inference log.
        model: NAME (its champion), NAME@alias, NAME/version or a models:/ URI.

    Returns:
        The service; ``service.swapper.load_first()`` loads the version the reference names.

    Raises:
        ConfigError: ``model`` is not a registry reference (a path, a pickle), or the inference
            log settings are inconsistent (``sql`` without a URL), or the access log's level is
            unknown.
        MlopsError: the inference log cannot be opened.
    """
    uri = settings.resolved_tracking_uri
    check = model_check_limits(settings)

    def client() -> MlflowClient:
        return MlflowClient(uri, registry_uri=uri)

    def load(registry: MlflowClient, reference: str) -> ServedModel:
        return load_served_model(registry, reference, uri, check)

    try:
        parse_reference(model)  # a path or a pickle is refused even with --wait-for-model
        log = build_inference_log(settings)
        access_log = build_access_log(settings.serving_access_log_level)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    state = ServingState(
        None, serving_limits(settings), log=log, access_log=access_log, reference=model
    )
    return ServingService(state, ModelSwapper(state, model, client, load), log)


def inference_log_target(settings: Settings) -> str:
    """Where the inference log goes: its database URL for ``sql``, else its folder."""
    target = settings.inference_log_url if settings.inference_log == "sql" else None
    return str(target or artifact_store(settings).inference_log_root)


def run_service(service: ServingService, host: str, port: int) -> None:
    """Serve until stopped (Ctrl-C, SIGTERM), then write the inference log out."""
    uvicorn.run(
        build_app(service.state, service.swapper),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,  # an idle keep-alive connection is closed after 5 s
        # a stop waits this long for requests in flight (slow bodies time out later), then
        # writes the inference log out
        timeout_graceful_shutdown=10,
        # No limit_concurrency: it counts idle connections too, so a few hundred idle or slow
        # clients would get every request a plain-text 503; the app sheds on event-loop lag
        # and bounds body memory itself, and answers JSON.
    )
