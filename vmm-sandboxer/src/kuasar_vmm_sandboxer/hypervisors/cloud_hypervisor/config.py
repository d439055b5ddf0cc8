"""``[hypervisor]`` of ``type = "cloud-hypervisor"``: upstream's CloudHypervisorVMConfig keys (``path``,
``hugepages``, ``entropy_source``, ``[hypervisor.task]``, ``[hypervisor.virtiofsd]``) over the common ones.

Cloud Hypervisor shares the pod directory with virtio-fs only (virtiofsd), as upstream does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from kuasar_shared.config import ConfigError

from kuasar_vmm_sandboxer.config import HypervisorConfig

__all__ = ["CloudHypervisorConfig", "TaskConfig", "VirtiofsdConfig"]


@dataclass
class TaskConfig:
    """The guest agent's switches (kernel ``task.*`` parameters)."""

    debug: bool = False
    enable_tracing: bool = False


@dataclass
class VirtiofsdConfig:
    path: str = "/usr/local/bin/virtiofsd"
    log_level: str = "info"
    cache: str = "never"
    thread_pool_size: int = 4
    syslog: bool = True


@dataclass
class CloudHypervisorConfig(HypervisorConfig):
    path: str = "/usr/local/bin/cloud-hypervisor"
    hugepages: bool = False
    entropy_source: str = "/dev/urandom"
    task: TaskConfig = field(default_factory=TaskConfig)
    virtiofsd: VirtiofsdConfig = field(default_factory=VirtiofsdConfig)

    def check(self, path: str) -> None:
        super().check(path)
        if not self.path:
            raise ConfigError(path, "[hypervisor].path", "must name the cloud-hypervisor binary")
        if self.image_path and self.initrd_path:
            raise ConfigError(path, "[hypervisor]", "set one of image_path or initrd_path, not both")
        if self.virtiofsd.cache not in ("never", "auto", "always", "metadata"):
            raise ConfigError(path, "[hypervisor.virtiofsd].cache", "expected never, auto, always or metadata, "
                              "got %r" % self.virtiofsd.cache)
        if self.virtiofsd.thread_pool_size < 0:
            raise ConfigError(path, "[hypervisor.virtiofsd].thread_pool_size", "must not be negative")
