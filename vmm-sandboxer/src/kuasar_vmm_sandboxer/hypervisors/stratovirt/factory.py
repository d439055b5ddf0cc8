"""StratoVirtFactory: builds :class:`StratoVirtVM` objects and re-attaches to running ones."""
from __future__ import annotations

from typing import Any

from kuasar_shared.errors import Unavailable
from kuasar_shared.oci import is_same_process

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.stratovirt.config import StratoVirtConfig
from kuasar_vmm_sandboxer.hypervisors.stratovirt.vm import StratoVirtVM
from kuasar_vmm_sandboxer.vm import VMFactory, VMSpec

__all__ = ["StratoVirtFactory"]


class StratoVirtFactory(VMFactory):
    def __init__(self, config: HypervisorConfig) -> None:
        if not isinstance(config, StratoVirtConfig):
            raise TypeError("StratoVirtFactory needs a StratoVirtConfig, got %s" % type(config).__name__)
        self.config = config

    def create(self, spec: VMSpec) -> StratoVirtVM:
        return StratoVirtVM(spec, self.config)

    def attach(self, spec: VMSpec, record: dict[str, Any]) -> StratoVirtVM:
        vm = StratoVirtVM(spec, self.config)
        vm.adopt(record)
        return vm

    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> StratoVirtVM:
        vm = self.attach(spec, record)
        if not is_same_process(vm.pid, vm.pid_start):
            raise Unavailable("sandbox %s: StratoVirt pid %d is gone" % (spec.id, vm.pid))
        await vm.ping()
        return vm
