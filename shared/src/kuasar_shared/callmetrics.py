"""Counting and timing the calls an API server answers (Sandbox API, Task API): one pair of series per API,
``<prefix>_requests_total{method,code}`` and ``<prefix>_request_duration_seconds{method}``.

Imported only when metrics are on (it loads prometheus-client).
"""
from __future__ import annotations

from typing import Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["CallMetrics"]


class CallMetrics:
    """Calls by method and status code, and their latency, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, prefix: str, api: str, codes: str,
                 buckets: Sequence[float]) -> None:
        self._requests = Counter(prefix + "_requests", f"{api} calls by method and {codes} code", ["method", "code"],
                                 registry=registry)
        self._latency = Histogram(prefix + "_request_duration_seconds", f"{api} call latency", ["method"],
                                  buckets=buckets, registry=registry)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self._requests.labels(method, code).inc()
        self._latency.labels(method).observe(seconds)
