"""docs/observability.md and the Grafana dashboard name only metrics the sandboxers really expose."""
from __future__ import annotations

import asyncio
import json
import re

from rpmroot import REPO

from kuasar_shared.metrics import SandboxerMetrics
from kuasar_shared.sandbox.pods import PodRecord, PodTable
from kuasar_shared.task.metrics import TaskServerMetrics
from kuasar_shared.task.records import ContainerRecord, Proc
from kuasar_shared.values import CgroupStats, TaskStatus
from kuasar_vmm_sandboxer.observed import BOOT_TO_AGENT, vmm_metrics
from kuasar_wasm_sandboxer.cache import CacheCounters
from kuasar_wasm_sandboxer.metrics import CacheCollector


class _OneContainer:
    """The part of a task backend the task server's metrics read: one running container."""

    def containers(self) -> list[ContainerRecord]:
        return [ContainerRecord(id="c", bundle="/b", sandbox_id="p", init=Proc("", status=TaskStatus.RUNNING))]

    async def stats(self, id: str) -> CgroupStats:
        return CgroupStats(cpu_total_ns=1, memory_usage=1, pids_current=1)

    def metric_collectors(self) -> list[CacheCollector]:
        """A type's own task-server series: wasm's compiled-module cache."""
        return [CacheCollector(CacheCounters())]


async def _expositions(tmp_path) -> str:
    typed = vmm_metrics()
    tasks = TaskServerMetrics(_OneContainer())  # type: ignore[arg-type]
    tasks.observe("Create", "OK", 0.01)
    metrics = SandboxerMetrics("vmm", "0.1.0", PodTable(str(tmp_path), PodRecord), lambda: {"cleaned_up": 1}, typed,
                               {"task-server": tasks.exposition})
    metrics.observe("Start", "OK", 0.01)
    typed.observe(BOOT_TO_AGENT, 12.0)
    return (await metrics.exposition()).decode()


def _exposed(tmp_path) -> set[str]:
    text = asyncio.run(_expositions(tmp_path))
    families = set(re.findall(r"^# TYPE (\S+) (\w+)", text, re.M))
    names = {name for name, _ in families}
    for name, kind in families:
        names |= {name + "_total"} if kind == "counter" else set()
        names |= {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else set()
        names |= {name + "_info"} if kind == "info" else set()
    return names


def test_dashboard_queries_use_exposed_metrics(tmp_path) -> None:
    dashboard = json.loads((REPO / "docs" / "grafana" / "kuasar.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"\bkuasar_[a-z_]+", e)}
    assert used and used <= _exposed(tmp_path)


def test_docs_table_names_exposed_metrics(tmp_path) -> None:
    text = (REPO / "docs" / "observability.md").read_text()
    documented = set(re.findall(r"`(kuasar_[a-z_]+)`", text))
    assert len(documented) >= 9 and documented <= _exposed(tmp_path)
