"""The StratoVirt devices a pod VM uses, as data (rendered by :mod:`kuasar_vmm_sandboxer.devices`).

StratoVirt's syntax differs from QEMU's where upstream Kuasar's ``stratovirt/devices/`` shows it:
socket chardevs take bare ``server,nowait``, PCI devices name ``bus=pcie.0`` and an explicit ``addr``
(slot 0 of the root bus is reserved; :class:`PciSlots` hands out the rest in order), ``-smp cpus=N``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from kuasar_vmm_sandboxer.devices import Device, Transport, flag, opt
from kuasar_vmm_sandboxer.hypervisors import _qemu_syntax as qs
from kuasar_vmm_sandboxer.hypervisors._qemu_syntax import ChardevFile, PciPlaced, TapNetdev

__all__ = ["PciSlots", "ChardevSocket", "ChardevFile", "RngRandom", "VirtioRng", "VirtioSerial", "VirtConsole",
           "VirtSerialPort", "Drive", "VirtioBlk", "VhostUserFs", "TapNetdev", "VirtioNet", "ROOT_BUS"]

ROOT_BUS = "pcie.0"
_ROOT_BUS_SLOTS = 32


class PciSlots:
    """``bus``/``addr`` for the devices of one VM: PCI devices get the next free slot of ``pcie.0``,
    virtio-mmio devices (microvm) neither."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self._next = 1

    def place(self) -> dict[str, str]:
        """The next device's ``bus`` and ``addr`` as keyword arguments. :raise ValueError: the bus is full."""
        if self.transport.kind == "mmio":
            return {}
        if self._next >= _ROOT_BUS_SLOTS:
            raise ValueError("no free slot on %s" % ROOT_BUS)
        slot, self._next = self._next, self._next + 1
        return {"bus": ROOT_BUS, "addr": hex(slot)}


@dataclass
class ChardevSocket(qs.Chardev):
    server: bool = flag("server", True)
    nowait: bool = flag("nowait", True)


@dataclass
class RngRandom(qs.RngRandom):
    id: str = opt("id", "")


@dataclass
class VirtioRng(PciPlaced, qs.VirtioRng):
    rng: str = opt("rng", "")


@dataclass
class VirtioSerial(PciPlaced, qs.VirtioSerial):
    id: str = opt("id", "")


@dataclass
class VirtConsole(Device):
    driver: str = "virtconsole"
    id: str = opt("id", "")
    chardev: str = opt("chardev", "")
    nr: int = opt("nr", 0)


@dataclass
class VirtSerialPort(Device):
    """The guest agent's port. StratoVirt's virtserialport has only ``id``, ``chardev`` and ``nr`` (no
    ``name``), so vmm-task finds it as the unnamed port 1 (``nr=1``)."""

    driver: str = "virtserialport"
    id: str = opt("id", "")
    chardev: str = opt("chardev", "")
    nr: int = opt("nr", 1)


@dataclass
class Drive(Device):
    option: ClassVar[str] = "-drive"
    head: ClassVar[str] = ""  # StratoVirt's -drive has no positional part
    id: str = opt("id", "rootfs")
    file: str = opt("file", "")
    readonly: Optional[bool] = opt("readonly")
    direct: Optional[bool] = opt("direct")


@dataclass
class VirtioBlk(PciPlaced, qs.VirtioBlk):
    pass


@dataclass
class VhostUserFs(Device):
    driver: str = "vhost-user-fs-pci"
    id: str = opt("id", "")
    chardev: str = opt("chardev", "")
    tag: str = opt("tag", "kuasar")
    bus: Optional[str] = opt("bus")
    addr: Optional[str] = opt("addr")


@dataclass
class VirtioNet(Device):
    """``mac`` after ``bus``/``addr``, as upstream writes it."""

    driver: str = "virtio-net-pci"
    netdev: str = opt("netdev", "")
    id: str = opt("id", "")
    bus: Optional[str] = opt("bus")
    addr: Optional[str] = opt("addr")
    mac: str = opt("mac", "")
