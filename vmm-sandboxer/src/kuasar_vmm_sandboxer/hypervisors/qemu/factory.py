"""QemuFactory: builds :class:`QemuVM` objects and re-attaches to running ones.

The factory decides the accelerator once, when the sandboxer starts (see :mod:`.accel`), logs why,
and hands every VM a config whose ``accel`` is the decided one. With ``template`` other than ``off``
its VMs ask :class:`~.template.Templates` at start whether to restore from a template, and with
``template_pool`` first take a warm VM of :class:`~.pool.WarmPool` when one is ready.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Optional

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, choose
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_shared.errors import KuasarError

from kuasar_vmm_sandboxer.hypervisors.qemu.pool import REFILL_DELAY_S, WarmPool
from kuasar_vmm_sandboxer.hypervisors.qemu.template import Templates, unusable_reason
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
        self.pool: Optional[WarmPool] = (WarmPool(self.config, self.templates)
                                         if self.templates is not None and self.config.template_pool else None)

    def use_directory(self, directory: str) -> None:
        """The warm pool lives below the sandboxer's ``--dir`` (warm VMs an earlier one left are stopped)."""
        if self.pool is not None:
            self.pool.open(directory)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()

    async def prepare_class(self, spec: VMSpec) -> None:
        """With ``template_at_start``: make ``spec``'s template now (a pod asking meanwhile waits for this one)."""
        if self.templates is None or not self.config.template_at_start:
            return
        reason = unusable_reason(self.config, spec)
        if reason is not None:
            log.warning("template_at_start: no template for the default pod VM: %s", reason)
            return
        try:
            made = await self.templates.get(spec)
        except (KuasarError, OSError) as err:
            log.warning("template_at_start: making the default pod VM's template failed (the first pod tries "
                        "again): %s", err)
            return
        log.info("template_at_start: template %s ready for pods of %d vCPU, %d MiB, %d NIC",
                 made.digest[:12], spec.vcpus, spec.memory_mb, len(spec.nics))
        if self.pool is not None:
            self.pool.keep(spec)

    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> QemuVM:
        """Re-attach; the pool keeps warm VMs of a re-attached template pod's class, as it did before the restart."""
        vm = await super().recover(spec, record)
        if self.pool is not None and vm.template:
            self.pool.keep(spec, REFILL_DELAY_S)
        return vm

    def new_vm(self, spec: VMSpec) -> QemuVM:
        return QemuVM(spec, self.config, ram_source=self.templates.ram_for if self.templates else None,
                      warm_source=self.pool.take if self.pool else None)
