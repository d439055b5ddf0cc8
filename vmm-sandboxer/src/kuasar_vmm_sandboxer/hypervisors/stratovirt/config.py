"""``[hypervisor]`` of ``type = "stratovirt"``: upstream's StratoVirtVMConfig keys (``path``,
``machine_type``, ``block_device_driver``, ``[hypervisor.virtiofsd_conf] path``) over the common ones.

StratoVirt shares the pod directory with virtio-fs only (a ``vhost_user_fs`` daemon), as upstream does.
"""
from __future__ import annotations

import platform
from dataclasses import dataclass, field

from kuasar_shared.config import ConfigError

from kuasar_vmm_sandboxer.config import HypervisorConfig

__all__ = ["StratoVirtConfig", "VirtiofsdConf", "DEFAULT_MACHINE"]

#: upstream's shipped files: ``q35,mem-share=on`` on x86_64 (vhost-user-fs needs shared memory), ``virt`` on arm64
DEFAULT_MACHINE = "q35,mem-share=on" if platform.machine() == "x86_64" else "virt"
_MACHINES = ("q35", "virt", "microvm")
_BLOCK_DRIVERS = ("virtio-blk", "virtio-scsi", "virtio-mmio")


@dataclass
class VirtiofsdConf:
    path: str = "/usr/bin/vhost_user_fs"


@dataclass
class StratoVirtConfig(HypervisorConfig):
    path: str = "/usr/bin/stratovirt"
    machine_type: str = DEFAULT_MACHINE
    block_device_driver: str = "virtio-blk"
    entropy_source: str = "/dev/urandom"
    virtiofsd_conf: VirtiofsdConf = field(default_factory=VirtiofsdConf)

    @property
    def machine(self) -> str:
        """The machine type without its options."""
        return self.machine_type.split(",")[0]

    def check(self, path: str) -> None:
        super().check(path)
        if self.machine not in _MACHINES:
            raise ConfigError(path, "[hypervisor].machine_type", "expected one of %s (with options), got %r"
                              % (", ".join(_MACHINES), self.machine_type))
        if "mem-share=on" not in self.machine_type.split(","):
            raise ConfigError(path, "[hypervisor].machine_type", "the pod share (vhost-user-fs) needs shared "
                              "guest memory: add mem-share=on, got %r" % self.machine_type)
        if self.image_path and self.initrd_path:
            raise ConfigError(path, "[hypervisor]", "set one of image_path or initrd_path, not both")
        if self.block_device_driver not in _BLOCK_DRIVERS:
            raise ConfigError(path, "[hypervisor].block_device_driver", "expected one of %s, got %r"
                              % (", ".join(_BLOCK_DRIVERS), self.block_device_driver))
        if not self.path:
            raise ConfigError(path, "[hypervisor].path", "must name the stratovirt binary")
