"""bench_vmm's arithmetic and the vmm section of the report, from synthetic numbers (no VM involved)."""
from __future__ import annotations

import os

import pytest

import bench_vmm
import report
from bench_vmm import (AGENT, CREATE, PRE_SPAWN, QEMU_START, RUN_POD_REST, SETUP, START, START_REST, TASK_CREATE,
                       TASK_REST, TASK_START)


def test_breakdown_splits_run_pod() -> None:
    info = {"start_spawn_ms": "3.0", "start_qemu_ms": "210.0", "start_agent_ms": "9000.0", "start_setup_ms": "40.0",
            "vcpus": "1"}
    steps = bench_vmm.breakdown(info, start_call_ms=9100.0, run_pod_ms=9130.0)
    assert steps == {PRE_SPAWN: 3.0, AGENT: 9000.0, QEMU_START: 210.0, SETUP: 40.0, START_REST: 57.0,
                     RUN_POD_REST: 30.0}
    assert sum(v for k, v in steps.items() if k != QEMU_START) == pytest.approx(9130.0)  # a part of AGENT


def test_breakdown_names_a_missing_timing() -> None:
    with pytest.raises(ValueError, match="start_setup_ms"):
        bench_vmm.breakdown({"start_spawn_ms": "1", "start_qemu_ms": "1", "start_agent_ms": "2"}, 10.0, 12.0)


def test_task_steps_split_the_container_start() -> None:
    steps = bench_vmm.task_steps({"Create": 900.0, "Connect": 20.0, "Start": 1500.0, "State": 15.0})
    assert steps == {TASK_CREATE: 900.0, TASK_START: 1500.0, TASK_REST: 35.0}
    with pytest.raises(ValueError, match="Create/Start"):
        bench_vmm.task_steps({"Create": 900.0})


def test_slope_is_least_squares() -> None:
    assert bench_vmm.slope([(1, 1000.0), (5, 2000.0), (10, 3250.0)]) == pytest.approx(250.0, abs=0.5)
    assert bench_vmm.slope([(0, 0.0), (2, 4.0)]) == 2.0
    with pytest.raises(ValueError, match="two distinct"):
        bench_vmm.slope([(5, 1.0), (5, 2.0)])


def _mem(pods: int, sandboxer: int, relay: int, qemu: int) -> dict:
    def group(kb: int) -> dict:
        return {"pss_kb": kb, "rss_kb": 2 * kb, "processes": 1}
    return {"pods": pods, "management": {"vmm-sandboxer": group(sandboxer), "vmm-task-relay": group(relay),
                                         "total": group(sandboxer + relay)},
            "daemon": {"total": group(0)}, "per_pod": {"QEMU": group(qemu), "total": group(qemu)}}


def _serial() -> dict:
    agents = [9000.0, 10000.0, 11000.0]
    steps = {PRE_SPAWN: [2.0] * 3, AGENT: agents, SETUP: [30.0] * 3, START_REST: [50.0, 60.0, 70.0],
             RUN_POD_REST: [10.0] * 3, CREATE: [5.0] * 3, START: [20.0] * 3}
    totals = [sum(v[i] for v in steps.values()) for i in range(3)]
    steps.update({QEMU_START: [200.0] * 3,  # a part of AGENT
                  TASK_CREATE: [8.0] * 3, TASK_START: [9.0] * 3, TASK_REST: [3.0] * 3})  # parts of START
    return {"samples_ms": totals, "steps_ms": steps, "cpu_per_start_ms": {"management": 61.04}}


def test_summarize_overhead_growth_and_targets() -> None:
    memory = [_mem(1, 30000, 20000, 200000), _mem(5, 30800, 20400, 1000000), _mem(10, 31800, 20900, 2000000)]
    out = bench_vmm.summarize(_serial(), memory)
    assert out["starts"] == 3
    assert out["total_ms"]["p50"] == pytest.approx(10127.0)
    assert out["overhead_ms"] == {"p50": 127.0, "p90": 135.0}  # 117, 127, 137 ms
    assert out["overhead_in_guest_ms"] == {"p50": 47.0, "p90": 47.0}  # SetupSandbox + task Create + Start
    assert out["host_only_steps_ms"] == {"p50": 77.0, "p90": 85.0}  # 67, 77, 87 ms
    assert out["management_cpu_per_start_ms"] == 61.0
    assert out["boot_to_agent_ms"]["p50"] == 10000.0
    assert out["growth_pss_kb_per_pod"] == pytest.approx(300.0)  # on the target: met
    assert out["growth_rss_kb_per_pod"] == pytest.approx(600.0)
    assert out["met"] == {"overhead_p50_ms": False, "growth_pss_kb_per_pod": True}
    assert out["management_pss_kb"]["10"] == {"vmm-sandboxer": 31800, "vmm-task-relay": 20900, "total": 52700}
    assert out["qemu_pss_kb"]["5"] == 1000000


def test_summarize_without_enough_memory_rows_has_no_growth() -> None:
    out = bench_vmm.summarize(_serial(), [_mem(1, 30000, 20000, 200000)])
    assert "growth_pss_kb_per_pod" not in out and "growth_pss_kb_per_pod" not in out["met"]


def test_config_points_at_the_image_and_boot_timeout() -> None:
    template = 'kernel_path = "/var/lib/kuasar/vmlinux.bin"\nboot_timeout_secs = 30\n'
    text = bench_vmm.config_text(template, "/var/cache/g/", 240)
    assert text == 'kernel_path = "/var/cache/g/vmlinux.bin"\nboot_timeout_secs = 240\n'
    with pytest.raises(ValueError, match="boot_timeout_secs"):
        bench_vmm.config_text("kernel_path = 'x'\n", "/g", 240)


def test_repository_config_has_what_the_bench_replaces() -> None:
    with open(os.path.join(bench_vmm.REPO, "vmm-sandboxer", "config_qemu.toml")) as f:
        text = bench_vmm.config_text(f.read(), "/img", 240)
    assert '"/img/vmlinux.bin"' in text and '"/img/kuasar.initrd"' in text
    with open(os.path.join(bench_vmm.REPO, "vmm-sandboxer", "config_qemu.toml")) as f:
        text = bench_vmm.config_text(f.read(), "/img", 240, "/w/templates", pool=2)
    assert 'template = "auto"' in text and 'template_dir = "/w/templates"' in text and "template_pool = 2" in text


def test_warm_vms_counts_the_ready_ones(tmp_path) -> None:
    pool = tmp_path / ".vm-pool"
    for name, record in (("a", '{"ready": true}'), ("b", '{"ready": false}'), ("c", "not json"), ("d", None)):
        (pool / name).mkdir(parents=True)
        if record is not None:
            (pool / name / "warm.json").write_text(record)
    assert bench_vmm.warm_vms(str(tmp_path)) == 1
    assert bench_vmm.warm_vms(str(tmp_path / "nowhere")) == 0


def test_report_has_the_vmm_section(tmp_path) -> None:
    memory = [_mem(1, 30000, 20000, 200000), _mem(10, 40000, 20000, 2000000)]
    vmm = {**bench_vmm.summarize(_serial(), memory),
           "guest_image": {"dir": "/img", "kernel_bytes": 65 << 20, "initrd_bytes": 43 << 20, "rootfs_bytes": 40 << 20,
                           "cold_build_s": 29.7, "built_in_this_run": False, "cached_build_s": 0.4},
           "parallel_error": "3 at once: RuntimeError: boom"}
    results = {"date": "2026-01-01T00:00:00+00:00", "smoke": False, "machine": {"kernel": "6", "cpus": 2,
                                                                                "python": "3.11"},
               "sides": {report.VMM: {"versions": {}, "memory": memory, "parallel": [], "vmm": vmm}},
               "updates": {report.VMM: {"date": "2026-01-02T00:00:00+00:00", "loadavg_before": [1.0, 0.5, 0.2],
                                        "loadavg_after": [2.0, 1.0, 0.5]}}}
    path = tmp_path / "RESULTS.md"
    report.write_markdown(results, str(path))
    text = path.read_text()
    for needle in ("## kuasar-vmm: VM pods", "| management overhead p50 (total - guest boot to agent) | 127.0 ms "
                   "| <= 50 ms | **no** |", "| management PSS growth per pod (vmm-sandboxer + vmm-task-relay) "
                   "| 1111 KB | <= 300 KB | **no** |", "RSS growth per pod; PSS shifts with other processes sharing "
                   "libraries) | 2222 KB | | |", "| vmm: QEMU spawn to guest agent ready | 10000.0 | 10800.0 |",
                   "| 10 | 60000 | 40000 | 20000 | 2000000 | 200000 |", "vmlinux.bin 65.0 MiB",
                   "failed: 3 at once: RuntimeError: boom", "Measured in a later run (see their sections): kuasar-vmm",
                   "load average (1/5/15 min) 1.0 / 0.5 / 0.2 before", "per serial start (boot wait included): 61 ms"):
        assert needle in text, needle
    assert "overhead p50 127.0 ms growth 1111 KB/pod" in report.summary(results)
