"""run.py's merge of a partial run (``--types``) into the results.json it goes to."""
from __future__ import annotations

import run


def _side(p50: float) -> dict:
    return {"serial": {"latency_ms": {"p50": p50}}, "parallel": [], "memory": []}


def test_merge_replaces_the_sides_run_and_keeps_the_others() -> None:
    previous = {"date": "d1", "smoke": False, "machine": {"cpus": 2},
                "sides": {"containerd-shim-runc-v2": _side(10.0), "kuasar-runc": _side(12.0), "kuasar-vmm": _side(1.0)},
                "plans": {"kuasar-runc": {"serial": 100}, "kuasar-vmm": {"serial": 1}}, "ratios": {}}
    current = {"date": "d2", "smoke": False, "machine": {"cpus": 2, "loadavg_before": [1.0, 1.0, 1.0],
                                                         "loadavg_1_5_15": [2.0, 1.5, 1.0]},
               "sides": {"kuasar-vmm": _side(9000.0)}, "plans": {"kuasar-vmm": {"serial": 5}}}
    merged = run.merge(previous, current)
    assert merged["date"] == "d1" and merged["machine"] == {"cpus": 2}
    assert merged["sides"]["kuasar-vmm"]["serial"]["latency_ms"]["p50"] == 9000.0
    assert merged["sides"]["kuasar-runc"] is previous["sides"]["kuasar-runc"]
    assert merged["plans"] == {"kuasar-runc": {"serial": 100}, "kuasar-vmm": {"serial": 5}}
    assert merged["updates"] == {"kuasar-vmm": {"date": "d2", "loadavg_before": [1.0, 1.0, 1.0],
                                                "loadavg_after": [2.0, 1.5, 1.0]}}
    assert merged["ratios"] == {"serial_p50": 1.2}
    assert previous["sides"]["kuasar-vmm"]["serial"]["latency_ms"]["p50"] == 1.0  # the input is not changed


def test_previous_only_of_the_same_kind(tmp_path) -> None:
    path = tmp_path / "results.json"
    assert run._previous(str(path), False) is None
    path.write_text('{"smoke": true, "sides": {}}')
    assert run._previous(str(path), False) is None
    assert run._previous(str(path), True) == {"smoke": True, "sides": {}}
