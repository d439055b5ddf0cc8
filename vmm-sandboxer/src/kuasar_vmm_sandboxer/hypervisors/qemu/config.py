"""``[hypervisor]`` of ``type = "qemu"``: upstream's QemuVMConfig keys we honour, plus what
QEMU-without-KVM needs (``accel``, ``tcg_tb_size_mb``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from kuasar_shared.config import ConfigError

from kuasar_vmm_sandboxer.config import SHARE_9P, HypervisorConfig, share_name

__all__ = ["QemuConfig", "TCG_CPU", "MACHINES", "ACCELS", "TEMPLATE_MODES", "DEFAULT_TEMPLATE_DIR"]

MACHINES = ("microvm", "q35", "pc")
ACCELS = ("auto", "kvm", "tcg")
#: ``off``: every pod boots cold; ``auto``: pods start from a VM template when they can (else cold, and
#: the log says why); ``required``: a pod that cannot fails Start
TEMPLATE_MODES = ("auto", "off", "required")
DEFAULT_TEMPLATE_DIR = "/var/lib/kuasar/templates"
#: warm VMs per template class at most (each holds its own QEMU and guest pages)
MAX_TEMPLATE_POOL = 16
#: the TCG default: the guest boots to its agent ~1.5-2 s sooner than on ``max`` (whose wider
#: features cost emulation time); rdrand seeds the guest's RNG at once (random.trust_cpu), so
#: Python does not wait for entropy at start
TCG_CPU = "qemu64,+rdrand"


@dataclass
class QemuConfig(HypervisorConfig):
    qemu_path: str = "/usr/bin/qemu-system-x86_64"
    machine_type: str = "microvm"
    machine_accelerators: str = ""
    #: ``auto``: KVM where it can run a stock guest kernel, else TCG (resolved once by the QEMU factory)
    accel: str = "auto"
    cpu_model: str = ""
    default_max_vcpus: int = 0
    entropy_source: str = "/dev/urandom"
    share_fs: str = SHARE_9P
    msize_9p: int = 8192
    virtiofs_daemon_path: str = "/usr/lib/qemu/virtiofsd"
    virtiofs_cache: str = "always"
    virtiofs_extra_args: list[str] = field(default_factory=list)
    #: None: vsock exactly when the host has /dev/vhost-vsock
    use_vsock: Optional[bool] = None
    #: TCG translation cache (MiB); QEMU's own default is 1 GiB, more than the overhead allows
    tcg_tb_size_mb: int = 128
    #: start pods from VM templates (:mod:`.template`): one of :data:`TEMPLATE_MODES`
    template: str = "off"
    #: where templates (guest RAM + device state, hundreds of MiB each) are kept across restarts
    template_dir: str = DEFAULT_TEMPLATE_DIR
    #: make the template of the default pod VM ([hypervisor] vcpus and memory_in_mb, one NIC) when the sandboxer
    #: starts, so that the first such pod does not wait for it; other classes are made at their first pod
    template_at_start: bool = False
    #: restored, warmed VMs kept ready per template class (:mod:`.pool`); each idles at ~120 MB and a pod that
    #: takes one skips the restore and runc's first run under emulation. 0: none
    template_pool: int = 0

    @property
    def cpu(self) -> str:
        """``-cpu``: the configured model, else ``host`` under KVM and :data:`TCG_CPU` under TCG."""
        if self.cpu_model:
            return self.cpu_model
        return "host" if self.accel == "kvm" else TCG_CPU

    @property
    def vsock(self) -> bool:
        return os.path.exists("/dev/vhost-vsock") if self.use_vsock is None else self.use_vsock

    def check(self, path: str) -> None:
        super().check(path)
        if self.machine_type not in MACHINES:
            raise ConfigError(path, "[hypervisor].machine_type", "expected one of %s, got %r"
                              % (", ".join(MACHINES), self.machine_type))
        if self.accel not in ACCELS:
            raise ConfigError(path, "[hypervisor].accel", "expected auto, kvm or tcg, got %r" % self.accel)
        if self.template not in TEMPLATE_MODES:
            raise ConfigError(path, "[hypervisor].template", "expected auto, off or required, got %r" % self.template)
        if self.template != "off" and not os.path.isabs(self.template_dir):
            raise ConfigError(path, "[hypervisor].template_dir", "must be an absolute path, got %r" % self.template_dir)
        if not 0 <= self.template_pool <= MAX_TEMPLATE_POOL:
            raise ConfigError(path, "[hypervisor].template_pool", "expected 0 to %d warm VMs per class, got %d"
                              % (MAX_TEMPLATE_POOL, self.template_pool))
        if self.template_pool and self.template == "off":
            raise ConfigError(path, "[hypervisor].template_pool", 'a pool of %d warm VMs is restored from templates, '
                              'but template = "off"' % self.template_pool)
        self.share_fs = share_name(self.share_fs, path)
        for key, value, low in (("msize_9p", self.msize_9p, 4096), ("tcg_tb_size_mb", self.tcg_tb_size_mb, 1)):
            if value < low:
                raise ConfigError(path, "[hypervisor].%s" % key, "must be at least %d, got %d" % (low, value))
        if self.accel != "kvm" and self.tcg_tb_size_mb >= self.memory_overhead_in_mb:
            raise ConfigError(path, "[hypervisor].tcg_tb_size_mb", "the translation cache (%d MiB) must fit in "
                              "memory_overhead_in_mb (%d MiB) with room for QEMU itself"
                              % (self.tcg_tb_size_mb, self.memory_overhead_in_mb))
