"""The QEMU devices a pod VM uses, as data (rendered by :mod:`kuasar_vmm_sandboxer.devices`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from kuasar_vmm_sandboxer.devices import Device, opt
from kuasar_vmm_sandboxer.hypervisors import _qemu_syntax as qs
from kuasar_vmm_sandboxer.hypervisors._qemu_syntax import ChardevFile, RngRandom, VirtioBlk, VirtioRng, VirtioSerial

__all__ = ["Machine", "Accel", "ChardevSocket", "ChardevFile", "VirtioSerial", "VirtSerialPort", "Fsdev", "Virtio9P",
           "VhostUserFs", "MemoryBackendMemfd",
           "MemoryBackendFile", "VmGenId", "HubportNetdev", "RngRandom", "VirtioRng", "TapNetdev", "VirtioNet",
           "VhostVsock", "Drive", "VirtioBlk", "PcieRootPort"]


@dataclass
class Machine(Device):
    option: ClassVar[str] = "-machine"
    head: ClassVar[str] = "type"
    type: str = "microvm"
    memory_backend: Optional[str] = opt("memory-backend")
    extra: str = ""

    def args(self) -> list[str]:
        option, value = super().args()
        return [option, value + ("," + self.extra if self.extra else "")]


@dataclass
class Accel(Device):
    """``-accel``; under TCG it caps the translation cache, which otherwise grows to 1 GiB and
    would push QEMU past the pod's memory limit (guest RAM + ``memory_overhead_in_mb``)."""

    option: ClassVar[str] = "-accel"
    head: ClassVar[str] = "type"
    type: str = "kvm"
    tb_size: Optional[int] = opt("tb-size")


@dataclass
class ChardevSocket(qs.Chardev):
    server: Optional[bool] = opt("server")
    wait: Optional[bool] = opt("wait")


@dataclass
class VirtSerialPort(Device):
    driver: str = "virtserialport"
    bus: str = opt("bus", "vser0.0")
    chardev: str = opt("chardev", "")
    name: str = opt("name", "")
    id: str = opt("id", "")


@dataclass
class Fsdev(Device):
    option: ClassVar[str] = "-fsdev"
    head: ClassVar[str] = "backend"
    backend: str = "local"
    id: str = opt("id", "")
    path: str = opt("path", "")
    security_model: str = opt("security_model", "none")
    multidevs: str = opt("multidevs", "remap")


@dataclass
class Virtio9P(Device):
    driver: str = "virtio-9p-pci"
    fsdev: str = opt("fsdev", "")
    mount_tag: str = opt("mount_tag", "kuasar")
    id: str = opt("id", "")


@dataclass
class VhostUserFs(Device):
    driver: str = "vhost-user-fs-pci"
    chardev: str = opt("chardev", "")
    tag: str = opt("tag", "kuasar")
    id: str = opt("id", "")


@dataclass
class MemoryBackendMemfd(Device):
    option: ClassVar[str] = "-object"
    head: ClassVar[str] = "qom_type"
    qom_type: str = "memory-backend-memfd"
    id: str = opt("id", "mem0")
    size: str = opt("size", "")
    share: bool = opt("share", True)


@dataclass
class MemoryBackendFile(Device):
    """Guest RAM in a file: a template writes it (``share=on``); VMs restored from the template map it
    copy-on-write (``share=off``), sharing its pages until they write them."""

    option: ClassVar[str] = "-object"
    head: ClassVar[str] = "qom_type"
    qom_type: str = "memory-backend-file"
    id: str = opt("id", "mem0")
    size: str = opt("size", "")
    mem_path: str = opt("mem-path", "")
    share: bool = opt("share", False)


@dataclass
class VmGenId(Device):
    """The VM generation ID: each VM gets a new one (``auto``), which a restored guest kernel sees and
    reseeds its random number generator for (Linux's vmgenid driver)."""

    driver: str = "vmgenid"
    guid: str = opt("guid", "auto")
    id: str = opt("id", "vmgenid0")


@dataclass
class HubportNetdev(Device):
    """A NIC backend connected to nothing: a template's NICs (a restored VM gets the pod's tap)."""

    option: ClassVar[str] = "-netdev"
    head: ClassVar[str] = "backend"
    backend: str = "hubport"
    id: str = opt("id", "")
    hubid: int = opt("hubid", 0)


@dataclass
class TapNetdev(qs.TapNetdev):
    script: str = opt("script", "no")
    downscript: str = opt("downscript", "no")


@dataclass
class VirtioNet(Device):
    driver: str = "virtio-net-pci"
    netdev: str = opt("netdev", "")
    mac: str = opt("mac", "")
    id: str = opt("id", "")


@dataclass
class VhostVsock(Device):
    driver: str = "vhost-vsock-pci"
    guest_cid: int = opt("guest-cid", 3)
    id: str = opt("id", "vsock0")


@dataclass
class Drive(Device):
    option: ClassVar[str] = "-drive"
    head: ClassVar[str] = "unused"
    unused: str = ""
    file: str = opt("file", "")
    format: str = opt("format", "raw")
    if_: str = opt("if", "none")
    id: str = opt("id", "")
    readonly: Optional[bool] = opt("readonly")


@dataclass
class PcieRootPort(Device):
    driver: str = "pcie-root-port"
    id: str = opt("id", "")
    bus: str = opt("bus", "pcie.0")
    chassis: int = opt("chassis", 1)
    slot: int = opt("slot", 1)
