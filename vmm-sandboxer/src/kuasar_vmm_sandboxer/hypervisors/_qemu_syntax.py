"""The devices QEMU and StratoVirt (whose command line follows QEMU's) write the same way, as data.

Each backend's ``devices.py`` re-exports these or extends them: StratoVirt's PCI devices add an explicit
``bus``/``addr`` (:class:`PciPlaced`, fields after the device's own), its socket chardevs take bare
``server,nowait`` flags, QEMU's ``server=on,wait=off``. Imported by both backends without importing either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from kuasar_vmm_sandboxer.devices import Device, opt

__all__ = ["Chardev", "ChardevFile", "RngRandom", "VirtioRng", "VirtioSerial", "VirtioBlk", "TapNetdev",
           "PciPlaced"]


@dataclass
class Chardev(Device):
    """``-chardev <backend>,id=,path=``: subclasses add the backend's own keys."""

    option: ClassVar[str] = "-chardev"
    head: ClassVar[str] = "backend"
    backend: str = "socket"
    id: str = opt("id", "")
    path: str = opt("path", "")


@dataclass
class ChardevFile(Chardev):
    backend: str = "file"


@dataclass
class RngRandom(Device):
    option: ClassVar[str] = "-object"
    head: ClassVar[str] = "qom_type"
    qom_type: str = "rng-random"
    id: str = opt("id", "rng0")
    filename: str = opt("filename", "/dev/urandom")


@dataclass
class VirtioRng(Device):
    driver: str = "virtio-rng-pci"
    rng: str = opt("rng", "rng0")
    id: str = opt("id", "")


@dataclass
class VirtioSerial(Device):
    driver: str = "virtio-serial-pci"
    id: str = opt("id", "vser0")


@dataclass
class VirtioBlk(Device):
    driver: str = "virtio-blk-pci"
    drive: str = opt("drive", "")
    id: str = opt("id", "")
    bus: Optional[str] = opt("bus")


@dataclass
class TapNetdev(Device):
    option: ClassVar[str] = "-netdev"
    head: ClassVar[str] = "backend"
    backend: str = "tap"
    id: str = opt("id", "")
    ifname: str = opt("ifname", "")


@dataclass
class PciPlaced(Device):
    """An explicit PCI ``bus`` and ``addr``; listed first among a device's bases so they render last."""

    bus: Optional[str] = opt("bus")
    addr: Optional[str] = opt("addr")
