"""The vmm-sandboxer configuration file: ``[sandbox]`` + ``[hypervisor]`` with upstream key names.

Upstream Kuasar reads ``/var/lib/kuasar/config_qemu.toml`` (interfaces.md 5.1); we keep its keys
(``vcpus``, ``memory_in_mb``, ``kernel_path``, ``initrd_path``, ``image_path``, ``kernel_params``,
``qemu_path``, ``machine_type``, ``machine_accelerators``, ``share_fs``, ``virtiofs_*``,
``msize_9p``, ``use_vsock``...) and add what QEMU-without-KVM needs: ``accel`` (``auto``, ``kvm`` or ``tcg``) and
``boot_timeout_secs``, plus ``[sandbox].containerd_ttrpc_address`` (where guest OOM events go; upstream
hard-codes containerd's default). Parsing, type checks and unknown-key warnings come from
:mod:`kuasar_shared.config`; the checks that span keys (machine type, share fs names, sizes) are here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from kuasar_shared.config import ConfigError, load_config, parse_config
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ttrpc.transport import parse_address

__all__ = ["DEFAULT_CONFIG", "DEFAULT_CONTAINERD_TTRPC", "SandboxConfig", "HypervisorConfig", "VmmConfig", "load",
           "parse", "SHARE_9P", "SHARE_VIRTIOFS"]

DEFAULT_CONFIG = "/var/lib/kuasar/config_qemu.toml"
DEFAULT_CONTAINERD_TTRPC = "/run/containerd/containerd.sock.ttrpc"
SHARE_9P = "virtio-9p"
SHARE_VIRTIOFS = "virtio-fs"
_SHARE_NAMES = {"virtio-9p": SHARE_9P, "9p": SHARE_9P, "Virtio9P": SHARE_9P,
                "virtio-fs": SHARE_VIRTIOFS, "virtiofs": SHARE_VIRTIOFS, "VirtioFS": SHARE_VIRTIOFS}
_MACHINES = ("microvm", "q35", "pc")
#: the TCG default: the guest boots to its agent ~1.5-2 s sooner than on ``max`` (whose wider
#: features cost emulation time); rdrand seeds the guest's RNG at once (random.trust_cpu), so
#: Python does not wait for entropy at start
TCG_CPU = "qemu64,+rdrand"
_ACCELS = ("auto", "kvm", "tcg")


@dataclass
class SandboxConfig:
    log_level: str = ""
    enable_tracing: bool = False
    #: containerd's ttrpc socket (``Events/Forward`` of guest OOM events); "" forwards nothing
    containerd_ttrpc_address: str = DEFAULT_CONTAINERD_TTRPC


@dataclass
class HypervisorConfig:
    """``[hypervisor]``: upstream's HypervisorCommonConfig + QemuVMConfig keys we honour."""

    vcpus: int = 1
    memory_in_mb: int = 1024
    kernel_path: str = "/var/lib/kuasar/vmlinux.bin"
    image_path: str = ""
    initrd_path: str = "/var/lib/kuasar/kuasar.initrd"
    kernel_params: str = ""
    firmware: str = ""
    debug: bool = False
    enable_mem_prealloc: bool = False
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
    boot_timeout_secs: int = 30
    #: extra memory the QEMU process may use above the guest RAM (pod cgroup limit)
    memory_overhead_in_mb: int = 256
    #: TCG translation cache (MiB); QEMU's own default is 1 GiB, more than the overhead above allows
    tcg_tb_size_mb: int = 128

    @property
    def cpu(self) -> str:
        """``-cpu``: the configured model, else ``host`` under KVM and :data:`TCG_CPU` under TCG."""
        if self.cpu_model:
            return self.cpu_model
        return "host" if self.accel == "kvm" else TCG_CPU

    @property
    def vsock(self) -> bool:
        return os.path.exists("/dev/vhost-vsock") if self.use_vsock is None else self.use_vsock


@dataclass
class VmmConfig:
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)


def _check(cfg: VmmConfig, path: str) -> VmmConfig:
    if cfg.sandbox.containerd_ttrpc_address:
        try:
            scheme, _ = parse_address(cfg.sandbox.containerd_ttrpc_address)
        except InvalidArgument as err:
            raise ConfigError(path, "[sandbox].containerd_ttrpc_address", err.message) from None
        if scheme != "unix":
            raise ConfigError(path, "[sandbox].containerd_ttrpc_address", "expected a unix socket path, got %r"
                              % cfg.sandbox.containerd_ttrpc_address)
    hv = cfg.hypervisor
    if hv.machine_type not in _MACHINES:
        raise ConfigError(path, "[hypervisor].machine_type", "expected one of %s, got %r"
                          % (", ".join(_MACHINES), hv.machine_type))
    if hv.accel not in _ACCELS:
        raise ConfigError(path, "[hypervisor].accel", "expected auto, kvm or tcg, got %r" % hv.accel)
    share = _SHARE_NAMES.get(hv.share_fs)
    if share is None:
        raise ConfigError(path, "[hypervisor].share_fs", "expected virtio-9p or virtio-fs, got %r" % hv.share_fs)
    hv.share_fs = share
    for key, value, low in (("vcpus", hv.vcpus, 1), ("memory_in_mb", hv.memory_in_mb, 64),
                            ("boot_timeout_secs", hv.boot_timeout_secs, 1), ("msize_9p", hv.msize_9p, 4096),
                            ("tcg_tb_size_mb", hv.tcg_tb_size_mb, 1)):
        if value < low:
            raise ConfigError(path, "[hypervisor].%s" % key, "must be at least %d, got %d" % (low, value))
    if hv.accel != "kvm" and hv.tcg_tb_size_mb >= hv.memory_overhead_in_mb:
        raise ConfigError(path, "[hypervisor].tcg_tb_size_mb", "the translation cache (%d MiB) must fit in "
                          "memory_overhead_in_mb (%d MiB) with room for QEMU itself"
                          % (hv.tcg_tb_size_mb, hv.memory_overhead_in_mb))
    if not hv.kernel_path:
        raise ConfigError(path, "[hypervisor].kernel_path", "must name the guest kernel")
    if not (hv.initrd_path or hv.image_path):
        raise ConfigError(path, "[hypervisor]", "one of initrd_path or image_path must be set")
    return cfg


def parse(text: str, path: str = "<config>") -> VmmConfig:
    """Parse TOML text. :raise ConfigError: naming the file, the key and what was expected."""
    return _check(parse_config(text, VmmConfig, path), path)


def load(path: str) -> VmmConfig:
    """Load and check a config file. :raise ConfigError: missing file, bad TOML, wrong type or value."""
    return _check(load_config(path, VmmConfig), path)
