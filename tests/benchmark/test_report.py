"""report: RESULTS.md from a synthetic run (no runtime involved)."""
from __future__ import annotations

import report


def _side(pss_kb: int, p50: float) -> dict:
    lat = {"n": 3, "min": p50 - 1, "p50": p50, "p90": p50 + 1, "p99": p50 + 2, "max": p50 + 3, "mean": p50}
    group = {"pss_kb": pss_kb, "rss_kb": 2 * pss_kb, "processes": 1}
    return {"versions": {"x": "1"}, "serial": {"latency_ms": lat, "samples_ms": [p50] * 3,
                                                "cpu_per_start_ms": {"management": 1.0, "management_children": 2.0,
                                                                     "daemon": 0.5}},
            "parallel": [{"n": 2, "completion_ms": 10.0, "latency_ms": lat, "samples_ms": [p50] * 2}],
            "memory": [{"pods": 1, "management": {"a": group, "total": group}, "daemon": {"total": group},
                        "per_pod": {"total": group}}]}


def test_markdown_has_every_table(tmp_path) -> None:
    results = {"date": "2026-01-01T00:00:00+00:00", "smoke": True,
               "machine": {"kernel": "6", "cpus": 2, "python": "3.11"},
               "sides": {report.BASELINE: _side(2048, 10.0), report.OURS: _side(1024, 12.0),
                         "kuasar-vmm": {"error": "RuntimeError: boom"}},
               "plans": {report.OURS: {"serial": 3, "parallel": [2], "pods": [1]}},
               "ratios": {"pss_1": 0.5, "serial_p50": 1.2}}
    path = tmp_path / "RESULTS.md"
    report.write_markdown(results, str(path), image_prefix="results/")
    text = path.read_text()
    for needle in ("## Start latency", "## Management-plane memory", "## CPU time per pod start",
                   "| serial start p50 | 1.20 | <= 1.0 | **no** |", "kuasar-vmm: RuntimeError: boom",
                   "](results/start-cdf.png)", "smoke run"):
        assert needle in text
    assert "kuasar-runc: serial p50 12.0 ms" in report.summary(results)
