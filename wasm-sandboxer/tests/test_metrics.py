"""The cache series: valid exposition (parsed with prometheus-client's own parser), moving with real loads."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kuasar_wasm_sandboxer.cache import CacheCounters
from kuasar_wasm_sandboxer.metrics import CacheCollector


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_cache_series_follow_the_counters() -> None:
    counters = CacheCounters()
    registry = CollectorRegistry()
    registry.register(CacheCollector(counters))
    assert _samples(registry)[("kuasar_wasm_module_loads_total", (("outcome", "hit"),))] == 0
    counters.count(True, 0.25)
    counters.count(False, 0.002)
    counters.count(False, 0.001)
    samples = _samples(registry)
    assert samples[("kuasar_wasm_module_loads_total", (("outcome", "hit"),))] == 2
    assert samples[("kuasar_wasm_module_loads_total", (("outcome", "miss"),))] == 1
    assert samples[("kuasar_wasm_module_compile_seconds_total", ())] == 0.25
