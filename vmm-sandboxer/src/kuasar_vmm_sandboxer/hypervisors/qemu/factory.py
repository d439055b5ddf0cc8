"""QemuFactory: builds :class:`QemuVM` objects and re-attaches to running ones; QemuHooks maps
pod resources to vCPUs and memory (upstream rule: ceil(cpu_quota / cpu_period), memory limit).

The factory decides the accelerator once, when the sandboxer starts (see :mod:`.accel`), logs why,
and hands every VM a config whose ``accel`` is the decided one.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any, Mapping, Optional

from kuasar_shared.errors import FailedPrecondition, Unavailable
from kuasar_shared.oci import is_same_process

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, KvmProbe, choose
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import VM, Hooks, VMFactory, VMSpec

__all__ = ["QemuFactory", "QemuHooks", "pod_resources"]

_MIN_MEMORY_MB = 128
log = logging.getLogger(__name__)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def pod_resources(config: Mapping[str, Any], vcpus: int, memory_mb: int) -> tuple[int, int]:
    """vCPUs and memory (MiB) for a pod from CRI ``linux.resources`` (the decoded PodSandboxConfig),
    falling back to the configured defaults when a limit is absent."""
    res = config.get("linux", {}).get("resources", {}) or {}
    quota, period = _int(res.get("cpu_quota")), _int(res.get("cpu_period"))
    if quota > 0 and period > 0:
        vcpus = max(1, math.ceil(quota / period))
    limit = _int(res.get("memory_limit_in_bytes"))
    if limit > 0:
        memory_mb = max(_MIN_MEMORY_MB, limit // (1 << 20))
    return vcpus, memory_mb


class QemuHooks(Hooks):
    """Resources from the pod config at start (vCPUs, memory)."""

    def __init__(self, pod_config: Mapping[str, Any]) -> None:
        self.pod_config = pod_config

    def pre_start(self, spec: VMSpec) -> VMSpec:
        vcpus, memory = pod_resources(self.pod_config, spec.vcpus, spec.memory_mb)
        return replace(spec, vcpus=vcpus, memory_mb=memory)


class QemuFactory(VMFactory):
    def __init__(self, config: HypervisorConfig, kvm: Optional[KvmProbe] = None) -> None:
        self.accel: AccelChoice = choose(config.accel, kvm)
        (log.error if self.accel.error else log.info)("%s", self.accel.describe(config.accel))
        self.config = replace(config, accel=self.accel.accel)

    def create(self, spec: VMSpec) -> QemuVM:
        """:raise FailedPrecondition: the configured accelerator cannot work on this host."""
        if self.accel.error:
            raise FailedPrecondition("sandbox %s: %s" % (spec.id, self.accel.error))
        return QemuVM(spec, self.config)

    def attach(self, spec: VMSpec, record: dict[str, Any]) -> QemuVM:
        vm = QemuVM(spec, self.config)
        vm.adopt(record)
        return vm

    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> VM:
        vm = self.attach(spec, record)
        if not is_same_process(vm.pid, vm.pid_start):
            raise Unavailable("sandbox %s: QEMU pid %d is gone" % (spec.id, vm.pid))
        await vm.ping()
        return vm
