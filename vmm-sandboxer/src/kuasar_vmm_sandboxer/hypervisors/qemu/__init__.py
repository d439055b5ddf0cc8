"""The QEMU adapter: argv from device dataclasses, QMP through ``qemu.qmp``."""
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory, QemuHooks
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM

__all__ = ["QemuVM", "QemuFactory", "QemuHooks"]
