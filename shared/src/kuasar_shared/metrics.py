"""Prometheus metrics of a sandboxer, served when ``--metrics-listen`` names an address.

Off by default: then this module is not imported and prometheus-client is not loaded. On, one resident
sandboxer answers ``GET /metrics`` on a loopback port (``127.0.0.1:9610``) or a unix socket
(``unix:/run/kuasar-runc/metrics.sock``) from its own event loop, no thread. What it exposes:

- ``kuasar_sandbox_api_requests_total{method,code}`` and ``kuasar_sandbox_api_request_duration_seconds{method}``:
  every Sandbox API call, timed where the controller receives it, by its gRPC code;
- ``kuasar_pods{state}``: pods this sandboxer holds, by state;
- ``kuasar_pod_cpu_seconds_total``, ``kuasar_pod_memory_usage_bytes``, ``kuasar_pod_memory_limit_bytes``,
  ``kuasar_pod_pids``, ``kuasar_pod_oom_kills_total`` (label ``pod``): read from each pod's cgroup at scrape
  time, the same numbers the Sandbox API ``Metrics`` call answers;
- ``kuasar_recoveries_total{outcome}``: what the last start-up did with the pods it found on disk;
- ``kuasar_sandboxer_info{type,version}``;
- what the sandbox type declares in :class:`~kuasar_shared.sandbox.observed.TypeMetrics` (vmm: boot to agent
  time, the VMM process's memory);
- the task server's own series (Task API calls, containers; :mod:`kuasar_shared.task.metrics`), read from its
  private metrics socket at scrape time, so that one scrape target covers a sandbox type.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, Mapping, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric

from kuasar_shared.callmetrics import CallMetrics
from kuasar_shared.errors import InvalidArgument, KuasarError

if TYPE_CHECKING:
    from kuasar_shared.sandbox.observed import TypeMetrics
    from kuasar_shared.sandbox.pods import PodTable

__all__ = ["SandboxerMetrics", "MetricsServer", "Exposition", "serve_metrics", "parse_metrics_address",
           "scrape_unix", "BUCKETS"]

log = logging.getLogger(__name__)

#: Sandbox API latencies run from a millisecond (Status) to minutes (a VM boot under emulation)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_MAX_REQUEST = 8192
#: seconds a scrape waits for the task server's part
_SOURCE_TIMEOUT = 5.0

#: what a scrape answers: the text exposition, gathered on the event loop
Exposition = Callable[[], Awaitable[bytes]]


class _PodCollector:
    """Reads the pod table and the pods' cgroups when Prometheus scrapes."""

    def __init__(self, pods: "PodTable[Any]", recoveries: Callable[[], Mapping[str, int]],
                 typed: "Optional[TypeMetrics[Any]]") -> None:
        self.pods = pods
        self.recoveries = recoveries
        self.typed = typed

    def describe(self) -> list[Metric]:
        return []  # no fixed set: the families depend on the pods present

    def collect(self) -> Iterator[Metric]:
        by_state = GaugeMetricFamily("kuasar_pods", "Pods held by this sandboxer, by state", labels=["state"])
        counts: dict[str, int] = {}
        cpu = CounterMetricFamily("kuasar_pod_cpu_seconds", "CPU time used by the pod's cgroup", labels=["pod"])
        memory = GaugeMetricFamily("kuasar_pod_memory_usage_bytes", "Memory used by the pod's cgroup",
                                   labels=["pod"])
        limit = GaugeMetricFamily("kuasar_pod_memory_limit_bytes", "Memory limit of the pod's cgroup",
                                  labels=["pod"])
        pids = GaugeMetricFamily("kuasar_pod_pids", "Processes in the pod's cgroup", labels=["pod"])
        ooms = CounterMetricFamily("kuasar_pod_oom_kills", "Processes the kernel killed at the pod's memory limit",
                                   labels=["pod"])
        gauges = [(GaugeMetricFamily(g.name, g.help, labels=["pod"]), g.read)
                  for g in (self.typed.pod_gauges if self.typed else ())]
        for pod in list(self.pods):
            counts[pod.state.value] = counts.get(pod.state.value, 0) + 1
            for family, read in gauges:
                value = read(pod)
                if value is not None:
                    family.add_metric([pod.id], value)
            try:
                stats = self.pods.metrics(pod.id)
            except (KuasarError, OSError) as err:
                log.debug("sandbox %s: no cgroup numbers: %s", pod.id, err)
                continue
            if stats is None:
                continue
            cpu.add_metric([pod.id], stats.cpu_total_ns / 1e9)
            memory.add_metric([pod.id], stats.memory_usage)
            if stats.memory_limit:
                limit.add_metric([pod.id], stats.memory_limit)
            pids.add_metric([pod.id], stats.pids_current)
            ooms.add_metric([pod.id], stats.memory_oom_kill)
        for state, count in sorted(counts.items()):
            by_state.add_metric([state], count)
        recovered = CounterMetricFamily("kuasar_recoveries", "Pods found on disk at start-up, by what became of "
                                        "them", labels=["outcome"])
        for outcome, count in sorted(self.recoveries().items()):
            recovered.add_metric([outcome], count)
        yield from (by_state, cpu, memory, limit, pids, ooms, recovered)
        yield from (family for family, _ in gauges)


class SandboxerMetrics:
    """The registry of one sandboxer and the observer the Sandbox API controller calls after every call.

    ``typed``: the sandbox type's own series, bound here (its histograms start recording now);
    ``sources``: more expositions appended to each scrape, by name (the task server's: ``task-server``); one that
    fails or is late is left out, and ``kuasar_metrics_source_up{source}`` says so (0) instead of a log line.
    """

    def __init__(self, sandbox_type: str, version: str, pods: "PodTable[Any]",
                 recoveries: Callable[[], Mapping[str, int]], typed: "Optional[TypeMetrics[Any]]" = None,
                 sources: Optional[Mapping[str, Exposition]] = None) -> None:
        self.registry = CollectorRegistry()
        self.sources = dict(sources or {})
        self._calls = CallMetrics(self.registry, "kuasar_sandbox_api", "Sandbox API", "gRPC", BUCKETS)
        self.registry.register(_PodCollector(pods, recoveries, typed))
        if typed is not None:
            histograms = {series.name: Histogram(series.name, series.help,
                                                 buckets=series.buckets or BUCKETS, registry=self.registry)
                          for series in typed.histograms}
            typed.bind(lambda name, seconds: histograms[name].observe(seconds))
        info = InfoMetricFamily("kuasar_sandboxer", "This sandboxer", value={"type": sandbox_type,
                                                                            "version": version})
        self.registry.register(_Fixed([info]))

    def observe(self, method: str, code: str, seconds: float) -> None:
        self._calls.observe(method, code, seconds)

    async def exposition(self) -> bytes:
        """This registry's text, then each source's (a failing source is logged and left out)."""
        parts = [generate_latest(self.registry)]
        if not self.sources:
            return parts[0]
        up = GaugeMetricFamily("kuasar_metrics_source_up", "Whether a process whose series this endpoint carries "
                               "answered the scrape (1) or was left out (0)", labels=["source"])
        for name, source in self.sources.items():
            try:
                parts.append(await asyncio.wait_for(source(), _SOURCE_TIMEOUT))
                up.add_metric([name], 1)
            except (OSError, asyncio.TimeoutError, InvalidArgument) as err:
                log.debug("metrics source %s failed: %s", name, err)
                up.add_metric([name], 0)
        sources = CollectorRegistry(auto_describe=False)
        sources.register(_Fixed([up]))
        parts.insert(1, generate_latest(sources))
        return b"".join(parts)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def parse_metrics_address(address: str) -> tuple[Optional[str], Optional[tuple[str, int]]]:
    """``unix:/abs/path`` -> (path, None); ``host:port`` -> (None, (host, port)).

    :raise InvalidArgument: naming ``--metrics-listen`` and what is wrong.
    """
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not os.path.isabs(path):
            raise InvalidArgument("--metrics-listen %r: a unix socket path must be absolute" % address)
        return path, None
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument("--metrics-listen %r: expected HOST:PORT (127.0.0.1:9610) or unix:/path" % address)
    return None, (host.strip("[]"), int(port))


class MetricsServer:
    """``GET /metrics`` over HTTP/1.0 on the event loop. Close with :meth:`close`."""

    def __init__(self, server: asyncio.Server, path: Optional[str]) -> None:
        self._server = server
        self.path = path

    @property
    def address(self) -> str:
        if self.path:
            return "unix:" + self.path
        host, port = self._server.sockets[0].getsockname()[:2]
        return "%s:%d" % (host, port)

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()
        if self.path:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


async def scrape_unix(path: str) -> bytes:
    """The body of ``GET /metrics`` from the metrics server on the unix socket ``path``.

    :raise OSError: it cannot be reached; InvalidArgument: it did not answer 200.
    """
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
        await writer.drain()
        reply = await reader.read()
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200 "):
        raise InvalidArgument("metrics at %s answered %r" % (path, head.split(b"\r\n", 1)[0]))
    return body


async def serve_metrics(address: str, exposition: Exposition) -> MetricsServer:
    """Listen on ``address`` (see :func:`parse_metrics_address`) and answer scrapes with ``exposition()``."""
    path, tcp = parse_metrics_address(address)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if method != b"GET":
                status, body, ctype = b"405 Method Not Allowed", b"only GET\n", b"text/plain"
            elif target.split(b"?", 1)[0] != b"/metrics":
                status, body, ctype = b"404 Not Found", b"metrics are at /metrics\n", b"text/plain"
            else:
                status, body, ctype = b"200 OK", await exposition(), CONTENT_TYPE_LATEST.encode()
            writer.write(b"HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                         % (status, ctype, len(body)) + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    try:
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            server = await asyncio.start_unix_server(handle, path, limit=_MAX_REQUEST)
            os.chmod(path, 0o660)
        else:
            assert tcp is not None
            server = await asyncio.start_server(handle, tcp[0], tcp[1], limit=_MAX_REQUEST)
    except OSError as err:
        raise InvalidArgument("--metrics-listen %r: cannot listen: %s" % (address, err.strerror)) from err
    served = MetricsServer(server, path)
    log.info("metrics on %s/metrics", served.address)
    return served
