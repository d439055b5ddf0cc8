"""The vmm-sandboxer configuration file: ``[sandbox]`` + ``[hypervisor]`` with upstream key names.

Upstream Kuasar ships one binary per hypervisor, each reading its own file (``config_qemu.toml``,
``config_stratovirt.toml``, ``config_clh.toml``; interfaces.md 5.1). We ship one sandboxer and choose
the hypervisor with ``[hypervisor] type`` (``qemu`` when absent, so upstream's QEMU files load as they
are); each backend package under :mod:`kuasar_vmm_sandboxer.hypervisors` declares its name and the
dataclass of its ``[hypervisor]`` keys, a subclass of :class:`HypervisorConfig` (upstream's
``HypervisorCommonConfig``: ``vcpus``, ``memory_in_mb``, ``kernel_path``, ``initrd_path``,
``image_path``, ``kernel_params``, ``firmware``, ``debug``, ``enable_mem_prealloc``) plus our
``boot_timeout_secs`` and ``memory_overhead_in_mb``. ``[sandbox].containerd_ttrpc_address`` is where
guest OOM events go (upstream hard-codes containerd's default). Parsing, type checks and unknown-key
warnings come from :mod:`kuasar_shared.config`; checks that span keys are each config class's
:meth:`HypervisorConfig.check`.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Type

from kuasar_shared.config import ConfigError, parse_config
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ttrpc.transport import parse_address

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = ["DEFAULT_CONFIG", "DEFAULT_CONTAINERD_TTRPC", "DEFAULT_TYPE", "SandboxConfig", "HypervisorConfig",
           "VmmConfig", "load", "parse", "SHARE_9P", "SHARE_VIRTIOFS", "share_name"]

DEFAULT_CONFIG = "/var/lib/kuasar/config_qemu.toml"
DEFAULT_CONTAINERD_TTRPC = "/run/containerd/containerd.sock.ttrpc"
DEFAULT_TYPE = "qemu"
SHARE_9P = "virtio-9p"
SHARE_VIRTIOFS = "virtio-fs"
_SHARE_NAMES = {"virtio-9p": SHARE_9P, "9p": SHARE_9P, "Virtio9P": SHARE_9P,
                "virtio-fs": SHARE_VIRTIOFS, "virtiofs": SHARE_VIRTIOFS, "VirtioFS": SHARE_VIRTIOFS}


def share_name(value: str, path: str) -> str:
    """The canonical share name for ``[hypervisor].share_fs`` (upstream spellings accepted).

    :raise ConfigError: not a share we know.
    """
    share = _SHARE_NAMES.get(value)
    if share is None:
        raise ConfigError(path, "[hypervisor].share_fs", "expected virtio-9p or virtio-fs, got %r" % value)
    return share


@dataclass
class SandboxConfig:
    log_level: str = ""
    enable_tracing: bool = False
    #: containerd's ttrpc socket (``Events/Forward`` of guest OOM events); "" forwards nothing
    containerd_ttrpc_address: str = DEFAULT_CONTAINERD_TTRPC


@dataclass
class HypervisorConfig:
    """``[hypervisor]`` keys every backend has (upstream's HypervisorCommonConfig + ours)."""

    #: which package under ``hypervisors/`` runs the pods (its ``BACKEND.name``)
    type: str = DEFAULT_TYPE
    vcpus: int = 1
    memory_in_mb: int = 1024
    kernel_path: str = "/var/lib/kuasar/vmlinux.bin"
    image_path: str = ""
    initrd_path: str = "/var/lib/kuasar/kuasar.initrd"
    kernel_params: str = ""
    firmware: str = ""
    debug: bool = False
    enable_mem_prealloc: bool = False
    boot_timeout_secs: int = 30
    #: extra memory the VMM process may use above the guest RAM (pod cgroup limit)
    memory_overhead_in_mb: int = 256

    def check(self, path: str) -> None:
        """Checks that span keys. :raise ConfigError: naming ``path`` and the key."""
        for key, value, low in (("vcpus", self.vcpus, 1), ("memory_in_mb", self.memory_in_mb, 64),
                                ("boot_timeout_secs", self.boot_timeout_secs, 1)):
            if value < low:
                raise ConfigError(path, "[hypervisor].%s" % key, "must be at least %d, got %d" % (low, value))
        if not self.kernel_path:
            raise ConfigError(path, "[hypervisor].kernel_path", "must name the guest kernel")
        if not (self.initrd_path or self.image_path):
            raise ConfigError(path, "[hypervisor]", "one of initrd_path or image_path must be set")


@dataclass
class VmmConfig:
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    hypervisor: HypervisorConfig = field(default_factory=HypervisorConfig)


def _schema(config_type: Type[HypervisorConfig]) -> Type[VmmConfig]:
    """VmmConfig whose ``[hypervisor]`` table is ``config_type``."""
    schema: Type[VmmConfig] = dataclasses.make_dataclass(
        "VmmConfig", [("hypervisor", config_type, field(default_factory=config_type))], bases=(VmmConfig,))
    return schema


def _hypervisor_type(text: str, path: str) -> Type[HypervisorConfig]:
    from kuasar_vmm_sandboxer import hypervisors

    try:
        table: Any = tomllib.loads(text).get("hypervisor", {})
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(path, "", "invalid TOML: %s" % err) from err
    name = table.get("type", DEFAULT_TYPE) if isinstance(table, dict) else DEFAULT_TYPE
    known = hypervisors.names()
    if name not in known:
        raise ConfigError(path, "[hypervisor].type", "expected one of %s, got %r" % (", ".join(known), name))
    return hypervisors.backend(name).config


def _check(cfg: VmmConfig, path: str) -> VmmConfig:
    if cfg.sandbox.containerd_ttrpc_address:
        try:
            scheme, _ = parse_address(cfg.sandbox.containerd_ttrpc_address)
        except InvalidArgument as err:
            raise ConfigError(path, "[sandbox].containerd_ttrpc_address", err.message) from None
        if scheme != "unix":
            raise ConfigError(path, "[sandbox].containerd_ttrpc_address", "expected a unix socket path, got %r"
                              % cfg.sandbox.containerd_ttrpc_address)
    cfg.hypervisor.check(path)
    return cfg


def parse(text: str, path: str = "<config>") -> VmmConfig:
    """Parse TOML text. :raise ConfigError: naming the file, the key and what was expected."""
    return _check(parse_config(text, _schema(_hypervisor_type(text, path)), path), path)


def load(path: str) -> VmmConfig:
    """Load and check a config file. :raise ConfigError: missing file, bad TOML, wrong type or value."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError:
        raise ConfigError(path, "", "configuration file does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(path, "", "cannot read the file: %s" % err) from err
    return parse(text, path)
