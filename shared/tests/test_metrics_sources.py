"""The sandboxer's endpoint carries other processes' series (its task server's): each source answers or is left out,
and ``kuasar_metrics_source_up`` tells an operator which, so a silent gap in a scrape is visible."""
from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kuasar_shared.metrics import SandboxerMetrics
from kuasar_shared.sandbox.pods import PodRecord, PodTable


async def test_a_source_that_fails_is_left_out_and_reported_down(tmp_path: Path) -> None:
    async def answers() -> bytes:
        return b"# HELP kuasar_task_things Things\n# TYPE kuasar_task_things gauge\nkuasar_task_things 3.0\n"

    async def refuses() -> bytes:
        raise ConnectionRefusedError("no task server")

    metrics = SandboxerMetrics("test", "0", PodTable(str(tmp_path), PodRecord), lambda: {},
                               sources={"task-server": answers, "other": refuses})
    body = (await metrics.exposition()).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body) for s in family.samples}
    assert samples[("kuasar_task_things", ())] == 3.0
    assert samples[("kuasar_metrics_source_up", (("source", "task-server"),))] == 1.0
    assert samples[("kuasar_metrics_source_up", (("source", "other"),))] == 0.0


async def test_without_sources_there_is_no_up_series(tmp_path: Path) -> None:
    metrics = SandboxerMetrics("test", "0", PodTable(str(tmp_path), PodRecord), lambda: {})
    assert "kuasar_metrics_source_up" not in (await asyncio.wait_for(metrics.exposition(), 5)).decode()
