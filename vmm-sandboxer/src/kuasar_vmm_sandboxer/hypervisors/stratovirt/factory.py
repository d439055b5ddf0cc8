"""StratoVirtFactory: builds :class:`StratoVirtVM` objects and re-attaches to running ones."""
from __future__ import annotations

from kuasar_vmm_sandboxer.hypervisors.stratovirt.config import StratoVirtConfig
from kuasar_vmm_sandboxer.hypervisors.stratovirt.vm import StratoVirtVM
from kuasar_vmm_sandboxer.process_vm import ProcessVMFactory
from kuasar_vmm_sandboxer.vm import VMSpec

__all__ = ["StratoVirtFactory"]


class StratoVirtFactory(ProcessVMFactory[StratoVirtVM, StratoVirtConfig]):
    needs_kvm = True
    config_type = StratoVirtConfig

    def new_vm(self, spec: VMSpec) -> StratoVirtVM:
        return StratoVirtVM(spec, self.config)
