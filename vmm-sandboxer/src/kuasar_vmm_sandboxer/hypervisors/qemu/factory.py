"""QemuFactory: builds :class:`QemuVM` objects and re-attaches to running ones.

The factory decides the accelerator once, when the sandboxer starts (see :mod:`.accel`), logs why,
and hands every VM a config whose ``accel`` is the decided one. With ``template`` other than ``off``
its VMs ask :class:`~.template.Templates` at start whether to restore from a template.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Optional

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, choose
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.template import Templates
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
        self.templates: Optional[Templates] = Templates(self.config) if self.config.template != "off" else None

    def new_vm(self, spec: VMSpec) -> QemuVM:
        return QemuVM(spec, self.config, ram_source=self.templates.ram_for if self.templates else None)
