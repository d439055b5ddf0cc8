"""What the vmm sandboxer adds to the shared metrics and traces: how long guests take from the VMM's spawn to
their agent answering, and how much memory each pod's VMM process holds.

Memory is the VMM process's PSS (``Pss`` of ``/proc/<pid>/smaps_rollup``): guest RAM the VMM touched, its
own heap and its share of the pages it shares with other processes (libraries; and, with VM templates, the
template's memory), so that the pods' numbers add up to what the node really spends, which RSS would count
once per VM. It is read at scrape time and costs a walk of the VMM's page tables (a few ms for a GiB guest).
"""
from __future__ import annotations

import logging
from typing import Optional

from kuasar_shared import tracing
from kuasar_shared.process_identity import is_same_process
from kuasar_shared.sandbox.observed import Histogram, PodGauge, TypeMetrics
from kuasar_shared.sandbox.pods import PodState

from kuasar_vmm_sandboxer.pod import VmmPod

__all__ = ["BOOT_TO_AGENT", "VMM_PSS", "FROM_TEMPLATE", "FROM_WARM_POOL", "vmm_metrics", "vmm_pss_bytes",
           "from_template", "from_warm_pool", "trace_boot"]

log = logging.getLogger(__name__)

BOOT_TO_AGENT = "kuasar_vm_boot_to_agent_seconds"
VMM_PSS = "kuasar_vmm_memory_pss_bytes"
FROM_TEMPLATE = "kuasar_vm_from_template"
FROM_WARM_POOL = "kuasar_vm_from_warm_pool"
#: a KVM boot takes a fraction of a second, a TCG one tens of seconds
_BOOT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)


def vmm_pss_bytes(pod: VmmPod) -> Optional[float]:
    """The PSS of a ready pod's VMM process in bytes; None when it is not ready or its VMM is gone."""
    pid = int(pod.vm.get("pid", 0))
    if pod.state is not PodState.READY or not pid or not is_same_process(pid, pod.vm.get("pid_start")):
        return None
    try:
        with open("/proc/%d/smaps_rollup" % pid) as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return float(int(line.split()[1]) * 1024)
    except OSError as err:
        log.debug("sandbox %s: no VMM memory: %s", pod.id, err)
    return None


def from_template(pod: VmmPod) -> Optional[float]:
    """1 when a ready pod's VM was restored from a VM template, 0 when it booted cold (the template hit rate is
    the mean over pods); None while it is not ready."""
    if pod.state is not PodState.READY:
        return None
    return 1.0 if pod.vm.get("template") else 0.0


def from_warm_pool(pod: VmmPod) -> Optional[float]:
    """1 when a ready pod took a warm VM of the pool, 0 otherwise (the mean is the pool's hit rate: what an operator
    sizes ``template_pool`` by); None while it is not ready."""
    if pod.state is not PodState.READY:
        return None
    return 1.0 if pod.vm.get("warm") else 0.0


def vmm_metrics() -> TypeMetrics[VmmPod]:
    """The vmm sandboxer's own series (recorded only once the metrics endpoint binds them)."""
    return TypeMetrics(
        histograms=[Histogram(BOOT_TO_AGENT, "Time from the VMM's spawn to the guest agent answering",
                              _BOOT_BUCKETS)],
        pod_gauges=[PodGauge(VMM_PSS, "Proportional set size of the pod's VMM process (QEMU...)", vmm_pss_bytes),
                    PodGauge(FROM_TEMPLATE, "1 when the pod's VM was restored from a VM template, 0 when it booted "
                             "cold", from_template),
                    PodGauge(FROM_WARM_POOL, "1 when the pod took a warm VM of the pool, 0 otherwise", from_warm_pool)])


def trace_boot(pod: VmmPod, begin: float) -> None:
    """The boot's steps as child spans of the current one, from the times the boot path recorded in
    ``pod.timings`` (ms: ``spawn`` after ``begin``, ``qemu`` VMM spawn to agent channel attached, ``agent`` VMM
    spawn to agent ready)."""
    timings = pod.timings
    if not tracing.enabled() or not {"spawn", "qemu", "agent"} <= timings.keys():
        return
    spawn = begin + timings["spawn"] / 1000
    tracing.past_span("vmm spawn", spawn, spawn + timings["qemu"] / 1000, sandbox_id=pod.id)
    tracing.past_span("agent ready", spawn, spawn + timings["agent"] / 1000, sandbox_id=pod.id)
