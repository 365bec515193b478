"""Prometheus text-format metrics of the service: requests, errors, latency, model version."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServiceMetrics:
    """Counters and a latency histogram, safe to update from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.rows = 0
        self.bucket_counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.latency_sum = 0.0

    def observe(self, path: str, status: int, seconds: float, rows: int = 0) -> None:
        """Count one request and its latency."""
        with self._lock:
            self.requests[(path, status)] += 1
            self.rows += rows
            self.bucket_counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
            self.latency_sum += seconds

    def render(self, model: str, version: str) -> str:
        """The metrics in Prometheus' text exposition format."""
        with self._lock:
            lines = [
                "# HELP mlops_serving_requests_total Requests by path and HTTP status.",
                "# TYPE mlops_serving_requests_total counter",
                *(
                    f'mlops_serving_requests_total{{path="{p}",status="{s}"}} {n}'
                    for (p, s), n in sorted(self.requests.items())
                ),
                "# HELP mlops_serving_errors_total Requests answered with a 4xx or 5xx status.",
                "# TYPE mlops_serving_errors_total counter",
                f"mlops_serving_errors_total {sum(n for (_, s), n in self.requests.items() if s >= 400)}",
                "# HELP mlops_serving_rows_total Rows scored.",
                "# TYPE mlops_serving_rows_total counter",
                f"mlops_serving_rows_total {self.rows}",
                "# HELP mlops_serving_latency_seconds Time to answer /invocations.",
                "# TYPE mlops_serving_latency_seconds histogram",
            ]
            cumulative = 0
            for bound, count in zip(LATENCY_BUCKETS_S, self.bucket_counts, strict=False):
                cumulative += count
                lines.append(f'mlops_serving_latency_seconds_bucket{{le="{bound}"}} {cumulative}')
            total = cumulative + self.bucket_counts[-1]
            lines += [
                f'mlops_serving_latency_seconds_bucket{{le="+Inf"}} {total}',
                f"mlops_serving_latency_seconds_sum {self.latency_sum}",
                f"mlops_serving_latency_seconds_count {total}",
                "# HELP mlops_serving_model_version The model version being served.",
                "# TYPE mlops_serving_model_version gauge",
                f'mlops_serving_model_version{{model="{model}"}} {version}',
            ]
        return "\n".join(lines) + "\n"


def gauge_lines(metric: str, help_text: str, value: float) -> str:
    """One Prometheus gauge in the text exposition format."""
    return f"# HELP {metric} {help_text}\n# TYPE {metric} gauge\n{metric} {value}\n"
