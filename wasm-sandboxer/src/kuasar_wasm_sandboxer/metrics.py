"""Prometheus series of the wasm task server: what the compiled-module cache saves.

Imported only when metrics are on (prometheus-client is optional). The numbers are the backend's
:class:`~kuasar_wasm_sandboxer.cache.CacheCounters`, counted from each runner's reply, read at scrape time:

- ``kuasar_wasm_module_loads_total{outcome}``: module loads, ``hit`` (mapped from the cache, nothing
  compiled) or ``miss`` (compiled: no entry, cache off, or an entry wasmtime refused);
- ``kuasar_wasm_module_compile_seconds_total``: the time the compiling loads took, in total (with the
  misses, the mean compile time).
"""
from __future__ import annotations

from typing import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from kuasar_wasm_sandboxer.cache import CacheCounters

__all__ = ["CacheCollector"]


class CacheCollector:
    """A collector (``registry.register(CacheCollector(backend.cache_counters))``) over the cache counters."""

    def __init__(self, counters: CacheCounters) -> None:
        self.counters = counters

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        loads = CounterMetricFamily("kuasar_wasm_module_loads", "wasm module loads by compiled-module cache outcome",
                                    labels=["outcome"])
        loads.add_metric(["hit"], self.counters.hits)
        loads.add_metric(["miss"], self.counters.misses)
        compile_time = CounterMetricFamily("kuasar_wasm_module_compile_seconds",
                                           "Time wasm module loads spent compiling (cache misses), in total")
        compile_time.add_metric([], self.counters.compile_seconds)
        yield from (loads, compile_time)
