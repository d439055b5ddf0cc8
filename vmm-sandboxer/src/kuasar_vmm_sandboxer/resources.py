"""The pod cgroup of a VM pod: sized for the VM (its vCPUs + 1, its RAM + the VMM's overhead) and
holding the VMM and its helpers."""
from __future__ import annotations

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.sandbox.pods import PodTable

from kuasar_vmm_sandboxer.pod import VmmPod
from kuasar_vmm_sandboxer.vm import Pids

__all__ = ["DEFAULT_CGROUP_PARENT", "create_pod_cgroup", "join_pod_cgroup"]

DEFAULT_CGROUP_PARENT = "kuasar-vmm"
_CPU_PERIOD = 100000


def create_pod_cgroup(pods: PodTable[VmmPod], pod: VmmPod, memory_overhead_mb: int) -> None:
    """The pod's own cgroup below its ``cgroup_parent`` (the caller saves the pod).

    :raise InvalidArgument: it cannot be created.
    """
    parent = str(pod.config.get("linux", {}).get("cgroup_parent", "")) or DEFAULT_CGROUP_PARENT
    pod.cgroup_parent = "%s/%s" % (parent.strip("/"), pod.id)
    pods.create_cgroup(pod)
    Cgroup.open(pod.cgroup_parent).set_resources({
        "cpu": {"period": _CPU_PERIOD, "quota": (pod.vcpus + 1) * _CPU_PERIOD},
        "memory": {"limit": (pod.memory_mb + memory_overhead_mb) << 20}})


def join_pod_cgroup(pod: VmmPod, pids: Pids) -> None:
    """Move the VMM (its threads follow) and its helpers into the pod cgroup."""
    if not pod.cgroup_parent:
        return
    cgroup = Cgroup.open(pod.cgroup_parent)
    for pid in (pids.vmm, *pids.affiliated):
        if pid:
            cgroup.add_pid(pid)
