"""QemuFactory: builds :class:`QemuVM` objects and re-attaches to running ones.

The factory decides the accelerator once, when the sandboxer starts (see :mod:`.accel`), logs why,
and hands every VM a config whose ``accel`` is the decided one.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Optional

from kuasar_shared.errors import FailedPrecondition, Unavailable
from kuasar_shared.oci import is_same_process

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, KvmProbe, choose
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import VM, VMFactory, VMSpec

__all__ = ["QemuFactory"]

log = logging.getLogger(__name__)


class QemuFactory(VMFactory):
    def __init__(self, config: HypervisorConfig, kvm: Optional[KvmProbe] = None) -> None:
        if not isinstance(config, QemuConfig):
            raise TypeError("QemuFactory needs a QemuConfig, got %s" % type(config).__name__)
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
