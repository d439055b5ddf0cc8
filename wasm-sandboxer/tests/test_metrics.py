"""The cache series: valid exposition (parsed with prometheus-client's own parser), moving with real loads."""
from __future__ import annotations

import asyncio
import uuid

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kuasar_shared.task.backend import CreateTask
from kuasar_shared.task.metrics import TaskServerMetrics

from kuasar_wasm_sandboxer.backend import WasmTaskBackend
from kuasar_wasm_sandboxer.cache import CacheCounters, ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.metrics import CacheCollector
from kuasar_wasm_sandboxer.runner_control import ForkServer


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


async def test_task_server_metrics_count_real_loads(tmp_path, bundle_factory) -> None:
    """Two starts of one module through the real backend: one miss (compiled), one hit, in the task
    server's exposition (the registry kuasar_shared.task.metrics serves, which the sandboxer appends)."""
    backend = WasmTaskBackend(str(tmp_path / "tasks"),
                              ForkServer(ModuleCache(str(tmp_path / "cache"), engine_fingerprint(), 64 << 20)))
    backend.forkserver.start()
    metrics = TaskServerMetrics(backend)
    try:
        for n in range(2):
            cid = f"metrics-{n}-{uuid.uuid4().hex[:6]}"
            await backend.create(CreateTask(id=cid, bundle=bundle_factory(["/bin/hello.wat"])))
            await backend.start(cid, "")
            await asyncio.wait_for(backend.wait(cid, ""), 30)
            await backend.delete(cid, "")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in
                   text_string_to_metric_families((await metrics.exposition()).decode()) for s in family.samples}
    finally:
        await backend.close()
    assert samples[("kuasar_wasm_module_loads_total", (("outcome", "hit"),))] == 1
    assert samples[("kuasar_wasm_module_loads_total", (("outcome", "miss"),))] == 1
    assert samples[("kuasar_wasm_module_compile_seconds_total", ())] > 0
