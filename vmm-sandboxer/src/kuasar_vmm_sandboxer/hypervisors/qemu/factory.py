"""QemuFactory: builds :class:`QemuVM` objects and re-attaches to running ones.

The factory decides the accelerator once, when the sandboxer starts (see :mod:`.accel`), logs why,
and hands every VM a config whose ``accel`` is the decided one.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, choose
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.kvm import KvmProbe
from kuasar_vmm_sandboxer.process_vm import ProcessVMFactory
from kuasar_vmm_sandboxer.vm import VMSpec

__all__ = ["QemuFactory"]

log = logging.getLogger(__name__)


class QemuFactory(ProcessVMFactory[QemuVM, QemuConfig]):
    config_type = QemuConfig

    def __init__(self, config: HypervisorConfig, kvm: Optional[KvmProbe] = None) -> None:
        super().__init__(config, kvm)
        self.accel: AccelChoice = choose(self.config.accel, kvm)
        (log.error if self.accel.error else log.info)("%s", self.accel.describe(self.config.accel))
        self.config = replace(self.config, accel=self.accel.accel)
        self.unusable = self.accel.error

    def new_vm(self, spec: VMSpec) -> QemuVM:
        return QemuVM(spec, self.config)
