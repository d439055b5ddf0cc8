"""The StratoVirt backend (``[hypervisor] type = "stratovirt"``), after upstream Kuasar's ``stratovirt/``:
argv from device dataclasses, QMP on its socket. Tested against a fake binary only (no StratoVirt here)."""
from kuasar_vmm_sandboxer.hypervisors import Backend
from kuasar_vmm_sandboxer.hypervisors.stratovirt.config import StratoVirtConfig
from kuasar_vmm_sandboxer.hypervisors.stratovirt.factory import StratoVirtFactory
from kuasar_vmm_sandboxer.hypervisors.stratovirt.vm import StratoVirtVM
from kuasar_vmm_sandboxer.vm import PodResourceHooks

__all__ = ["BACKEND", "StratoVirtConfig", "StratoVirtVM", "StratoVirtFactory"]

BACKEND = Backend(name="stratovirt", config=StratoVirtConfig, factory=StratoVirtFactory, hooks=PodResourceHooks)
