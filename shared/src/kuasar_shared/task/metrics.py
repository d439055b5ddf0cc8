"""Prometheus metrics of a task server, served on the private socket its sandboxer names (``--metrics-listen``).

Off by default: then this module is not imported and prometheus-client is not loaded. The sandboxer that
started the server appends this exposition to its own at each scrape, so an operator scrapes one target per
sandbox type. What it exposes:

- ``kuasar_task_api_requests_total{method,code}`` and ``kuasar_task_api_request_duration_seconds{method}``:
  every Task API call (v3 and v2 alike), timed where the service receives it, by its ttrpc (gRPC) code;
- ``kuasar_containers{state}``: the containers this server holds, by the state of their init process;
- ``kuasar_container_cpu_seconds_total``, ``kuasar_container_memory_usage_bytes``, ``kuasar_container_pids``
  (labels ``pod``, ``container``): the running containers' numbers from the backend's ``stats``, the call
  Task ``Stats`` answers from, sampled at scrape time.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kuasar_shared.callmetrics import CallMetrics
from kuasar_shared.errors import KuasarError
from kuasar_shared.task.recorded import RecordedTaskBackend
from kuasar_shared.values import CgroupStats, TaskStatus

__all__ = ["TaskServerMetrics"]

log = logging.getLogger(__name__)

#: Task API latencies run from well under a millisecond (State) to minutes (Wait lasts as long as its process)
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            300.0)
#: stats calls a scrape runs at once (each may run the OCI runtime)
_CONCURRENT_STATS = 4


class _ContainerCollector:
    """Containers by state and the last sample of each running one, taken by :meth:`TaskServerMetrics.sample`."""

    def __init__(self, backend: RecordedTaskBackend[Any]) -> None:
        self.backend = backend
        self.samples: dict[tuple[str, str], CgroupStats] = {}

    def describe(self) -> list[Metric]:
        return []  # no fixed set: the samples depend on the containers present

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("kuasar_containers", "Containers held by the task server, by state",
                                   labels=["state"])
        counts = {status.name.lower(): 0 for status in (TaskStatus.CREATED, TaskStatus.RUNNING, TaskStatus.PAUSED,
                                                         TaskStatus.STOPPED)}
        for container in self.backend.containers():
            state = container.init.status.name.lower()
            counts[state] = counts.get(state, 0) + 1
        for state, count in sorted(counts.items()):
            states.add_metric([state], count)
        labels = ["pod", "container"]
        cpu = CounterMetricFamily("kuasar_container_cpu_seconds", "CPU time used by the container", labels=labels)
        memory = GaugeMetricFamily("kuasar_container_memory_usage_bytes", "Memory used by the container",
                                   labels=labels)
        pids = GaugeMetricFamily("kuasar_container_pids", "Processes in the container", labels=labels)
        for (pod, container_id), stats in sorted(self.samples.items()):
            cpu.add_metric([pod, container_id], stats.cpu_total_ns / 1e9)
            memory.add_metric([pod, container_id], stats.memory_usage)
            pids.add_metric([pod, container_id], stats.pids_current)
        yield from (states, cpu, memory, pids)


class TaskServerMetrics:
    """The registry of one task server and the observer its Task service calls after every call."""

    def __init__(self, backend: RecordedTaskBackend[Any]) -> None:
        self.backend = backend
        self.registry = CollectorRegistry()
        self._calls = CallMetrics(self.registry, "kuasar_task_api", "Task API", "ttrpc (gRPC)", _BUCKETS)
        self._containers = _ContainerCollector(backend)
        self.registry.register(self._containers)
        for collector in backend.metric_collectors():
            self.registry.register(collector)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self._calls.observe(method, code, seconds)

    async def sample(self) -> None:
        """Take the running containers' numbers from the backend (a container that fails is left out)."""
        limit = asyncio.Semaphore(_CONCURRENT_STATS)

        async def one(container_id: str) -> CgroupStats | None:
            async with limit:
                try:
                    return await self.backend.stats(container_id)
                except (KuasarError, OSError) as err:
                    log.debug("container %s: no stats: %s", container_id, err)
                    return None

        running = [c for c in self.backend.containers() if c.init.status is TaskStatus.RUNNING]
        results = await asyncio.gather(*(one(c.id) for c in running))
        self._containers.samples = {(c.sandbox_id, c.id): stats for c, stats in zip(running, results)
                                    if stats is not None}

    async def exposition(self) -> bytes:
        await self.sample()
        return generate_latest(self.registry)
