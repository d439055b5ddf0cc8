"""OpenTelemetry spans of a sandboxer, exported over OTLP when ``--trace-endpoint`` names a collector.

Off by default: then :func:`span` is a no-op context manager and OpenTelemetry is never imported. On, every
Sandbox API call becomes a server span (``Controller/Start``...), continuing the engine's trace when its
gRPC metadata carries W3C ``traceparent`` (containerd sends it when its own tracing is on), and the
lifecycle steps below it become child spans (``pod start``, ``task server: stop containers``...). Spans are
batched and sent to the OTLP/gRPC endpoint; :func:`shutdown` flushes them before the daemon exits.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator, Optional, Sequence

__all__ = ["enable", "enabled", "shutdown", "span", "server_span", "past_span"]

log = logging.getLogger(__name__)

_tracer: Any = None
_provider: Any = None


def enabled() -> bool:
    return _tracer is not None


def enable(endpoint: str, service_name: str, version: str) -> None:
    """Export spans to the OTLP/gRPC collector at ``endpoint`` (``http://127.0.0.1:4317``).

    :raise ImportError: opentelemetry-sdk or its OTLP/gRPC exporter is not installed.
    """
    global _tracer, _provider
    from kuasar_shared.daemon.notls import allow
    allow()  # the exporter's dependencies may import ssl
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    insecure = not endpoint.startswith("https://")
    provider = TracerProvider(resource=Resource.create({"service.name": service_name, "service.version": version}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    _provider, _tracer = provider, provider.get_tracer("kuasar", version)
    log.info("tracing to %s as %s", endpoint, service_name)


def shutdown() -> None:
    """Flush pending spans and stop exporting."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A child span of the current one while tracing is on; nothing otherwise."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(name, attributes=attributes):
        yield


@contextlib.contextmanager
def server_span(name: str, metadata: Optional[Sequence[Any]], **attributes: Any) -> Iterator[Optional[Any]]:
    """A server span for one incoming call, child of the caller's span when ``metadata`` (gRPC invocation
    metadata: ``(key, value)`` pairs) carries ``traceparent``; yields the span (None when tracing is off)."""
    if _tracer is None:
        yield None
        return
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    carrier = {str(k).lower(): v for k, v in (metadata or ()) if isinstance(v, str)}
    with _tracer.start_as_current_span(name, context=extract(carrier), kind=SpanKind.SERVER,
                                       attributes=attributes) as current:
        yield current


def past_span(name: str, begin: float, end: float, **attributes: Any) -> None:
    """A child span of the current one for a step that ran from ``begin`` to ``end`` (``time.monotonic()``
    readings), recorded after the fact by code that learns the step's times from what did it; nothing when
    tracing is off."""
    if _tracer is None:
        return
    offset = time.time_ns() - time.monotonic_ns()
    recorded = _tracer.start_span(name, start_time=offset + int(begin * 1e9), attributes=attributes)
    recorded.end(end_time=offset + int(end * 1e9))
