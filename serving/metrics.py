"""Prometheus metrics of the service, rendered by ``prometheus_client``.

Each service has a registry of its own (several apps in one process, as in the tests, do not
share counters): the process's CPU, memory and open files, the Python platform and garbage
collector, then requests by path and status with their duration, errors and rows scored. What
the service's state says at scrape time (the model served, the event loop's lag, the inference
log's counters) is passed to ``render`` as metric families, built when ``/metrics`` is asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED = "(unmatched)"
"""The path label of a request to a path the service has no endpoint for (bounded labels)."""


class ServiceMetrics:
    """Requests, their duration, errors and rows scored, in a registry of this service's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Counter(
            "mlops_serving_requests",
            "Requests by path and HTTP status.",
            ["path", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "mlops_serving_request_duration_seconds",
            "Time to answer a request, by path and HTTP status.",
            ["path", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.errors = Counter(
            "mlops_serving_errors",
            "Requests answered with a 4xx or 5xx status.",
            registry=self.registry,
        )
        self.rows = Counter("mlops_serving_rows", "Rows scored.", registry=self.registry)
        self._children: dict[tuple[str, int], tuple] = {}

    def observe(self, path: str, status: int, seconds: float, rows: int = 0) -> None:
        """Count one request, its duration and the rows it scored (a few microseconds)."""
        children = self._children.get((path, status))
        if children is None:  # once per path and status: labels() is the costly part
            labels = (path, str(status))
            children = self.requests.labels(*labels), self.duration.labels(*labels)
            self._children[(path, status)] = children
        children[0].inc()
        children[1].observe(seconds)
        if rows:
            self.rows.inc(rows)
        if status >= 400:
            self.errors.inc()

    def render(self, *families: Iterable[Metric]) -> bytes:
        """The registry's metrics, then ``families``, in Prometheus' text exposition format."""
        return generate_latest(_Joined(self.registry, families))


class _Joined:
    """A registry's collectors followed by metric families built for one scrape."""

    def __init__(self, registry: CollectorRegistry, families: Iterable[Iterable[Metric]]):
        self.registry, self.families = registry, families

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        for family in self.families:
            yield from family


def gauge(metric: str, help_text: str, value: float, labels: dict[str, str] | None = None):
    """One gauge family of one sample."""
    family = GaugeMetricFamily(metric, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def model_families(model: str, version: str, last_error: str | None) -> list[Metric]:
    """The model served: whether one is loaded, its version (only once one is), reload trouble.

    Args:
        model: The registered model's name (known while waiting for its first version too).
        version: The version served; "" while none is loaded.
        last_error: Why the last load or reload failed; None when it did not.
    """
    labels = {"model": model}
    families = [
        gauge(
            "mlops_serving_model_loaded",
            "1 while a model version is served, 0 while the service waits for one.",
            1 if version else 0,
            labels,
        ),
        gauge(
            "mlops_serving_reload_failed",
            "1 when the last load or reload of a version failed (/health says why).",
            1 if last_error else 0,
            labels,
        ),
    ]
    version_family = GaugeMetricFamily(
        "mlops_serving_model_version",
        "The registry version being served (no sample while none is).",
        labels=["model"],
    )
    if version.isdigit():  # registry versions are numbers; nothing is better than a made-up one
        version_family.add_metric([model], int(version))
    return [*families, version_family]
