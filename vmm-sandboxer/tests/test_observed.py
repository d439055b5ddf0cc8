"""The vmm sandboxer's own series: the VMM's PSS read from a real process, the boot histogram recorded only once
the metrics endpoint binds it."""
from __future__ import annotations

import os
import subprocess

import pytest

from kuasar_shared.process_identity import start_time
from kuasar_shared.sandbox.pods import PodState

from kuasar_vmm_sandboxer.observed import BOOT_TO_AGENT, from_template, from_warm_pool, vmm_metrics, vmm_pss_bytes
from kuasar_vmm_sandboxer.pod import VmmPod


def _pod(pid: int, started: object, state: PodState = PodState.READY) -> VmmPod:
    pod = VmmPod(id="p", vm={"pid": pid, "pid_start": started})
    pod.state = state
    return pod


def test_pss_of_a_live_vmm_process() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        pss = vmm_pss_bytes(_pod(child.pid, start_time(child.pid)))
        with open("/proc/%d/smaps_rollup" % child.pid) as rollup:
            rss = next(int(line.split()[1]) * 1024 for line in rollup if line.startswith("Rss:"))
        assert pss is not None and 0 < pss <= rss  # shared libc pages count in part
    finally:
        child.kill()
        child.wait()


def test_no_pss_for_a_pod_not_ready_or_a_vmm_gone_or_reused() -> None:
    me = os.getpid()
    assert vmm_pss_bytes(_pod(me, start_time(me), PodState.STOPPED)) is None
    assert vmm_pss_bytes(_pod(me, (start_time(me) or 0) + 1)) is None  # the pid now names another process
    assert vmm_pss_bytes(VmmPod(id="p")) is None


def test_boot_histogram_records_only_once_bound() -> None:
    typed = vmm_metrics()
    typed.observe(BOOT_TO_AGENT, 3.0)  # metrics off: nothing to record into, nothing fails
    seen: list[tuple[str, float]] = []
    typed.bind(lambda name, value: seen.append((name, value)))
    typed.observe(BOOT_TO_AGENT, 3.0)
    assert seen == [(BOOT_TO_AGENT, 3.0)]
    with pytest.raises(ValueError, match="kuasar_vm_typo_seconds is not a declared histogram"):
        typed.observe("kuasar_vm_typo_seconds", 1.0)


def test_from_template_says_how_a_ready_pod_started() -> None:
    restored = _pod(1, None)
    restored.vm["template"] = "ab" * 32
    assert from_template(restored) == 1.0
    assert from_template(_pod(1, None)) == 0.0
    assert from_template(_pod(1, None, PodState.STOPPED)) is None


def test_from_warm_pool_says_whether_a_ready_pod_took_a_warm_vm() -> None:
    warm = _pod(1, None)
    warm.vm.update(template="ab" * 32, warm=True)
    assert from_warm_pool(warm) == 1.0 and from_template(warm) == 1.0
    restored = _pod(1, None)
    restored.vm["template"] = "ab" * 32
    assert from_warm_pool(restored) == 0.0
    assert from_warm_pool(_pod(1, None, PodState.STOPPED)) is None
