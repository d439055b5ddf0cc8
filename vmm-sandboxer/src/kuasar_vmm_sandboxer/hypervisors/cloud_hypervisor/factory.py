"""CloudHypervisorFactory: builds :class:`CloudHypervisorVM` objects and re-attaches to running ones."""
from __future__ import annotations

from typing import Any

from kuasar_shared.errors import Unavailable
from kuasar_shared.oci import is_same_process

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.config import CloudHypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.vm import CloudHypervisorVM
from kuasar_vmm_sandboxer.vm import VMFactory, VMSpec

__all__ = ["CloudHypervisorFactory"]


class CloudHypervisorFactory(VMFactory):
    def __init__(self, config: HypervisorConfig) -> None:
        if not isinstance(config, CloudHypervisorConfig):
            raise TypeError("CloudHypervisorFactory needs a CloudHypervisorConfig, got %s" % type(config).__name__)
        self.config = config

    def create(self, spec: VMSpec) -> CloudHypervisorVM:
        return CloudHypervisorVM(spec, self.config)

    def attach(self, spec: VMSpec, record: dict[str, Any]) -> CloudHypervisorVM:
        vm = CloudHypervisorVM(spec, self.config)
        vm.adopt(record)
        return vm

    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> CloudHypervisorVM:
        vm = self.attach(spec, record)
        if not is_same_process(vm.pid, vm.pid_start):
            raise Unavailable("sandbox %s: cloud-hypervisor pid %d is gone" % (spec.id, vm.pid))
        await vm.ping()
        return vm
