"""CloudHypervisorFactory: builds :class:`CloudHypervisorVM` objects and re-attaches to running ones."""
from __future__ import annotations

from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.config import CloudHypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.vm import CloudHypervisorVM
from kuasar_vmm_sandboxer.process_vm import ProcessVMFactory
from kuasar_vmm_sandboxer.vm import VMSpec

__all__ = ["CloudHypervisorFactory"]


class CloudHypervisorFactory(ProcessVMFactory[CloudHypervisorVM, CloudHypervisorConfig]):
    needs_kvm = True
    config_type = CloudHypervisorConfig

    def new_vm(self, spec: VMSpec) -> CloudHypervisorVM:
        return CloudHypervisorVM(spec, self.config)
