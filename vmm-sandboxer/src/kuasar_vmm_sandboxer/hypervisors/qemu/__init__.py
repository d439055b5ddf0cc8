"""The QEMU backend (``[hypervisor] type = "qemu"``, the default): argv from device dataclasses, QMP
through ``qemu.qmp``, the accelerator decided once by the factory."""
from kuasar_vmm_sandboxer.hypervisors import Backend
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import PodResourceHooks

__all__ = ["BACKEND", "QemuConfig", "QemuVM", "QemuFactory"]

BACKEND = Backend(name="qemu", config=QemuConfig, factory=QemuFactory, hooks=PodResourceHooks)
