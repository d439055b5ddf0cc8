"""The Cloud Hypervisor devices a pod VM uses, as data: each is one ``--<device> key=value,...`` option
(upstream Kuasar's ``cloud_hypervisor/devices/``; rendered by :mod:`kuasar_vmm_sandboxer.devices`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from kuasar_vmm_sandboxer.devices import Device, opt

__all__ = ["Pmem", "Rng", "Vsock", "Console", "Fs", "Net"]


@dataclass
class Pmem(Device):
    """The root image as a pmem device (``root=/dev/pmem0p1``)."""

    option: ClassVar[str] = "--pmem"
    head: ClassVar[str] = ""
    id: str = opt("id", "rootfs")
    file: str = opt("file", "")
    discard_writes: Optional[bool] = opt("discard_writes")


@dataclass
class Rng(Device):
    option: ClassVar[str] = "--rng"
    head: ClassVar[str] = ""
    src: str = opt("src", "/dev/urandom")


@dataclass
class Vsock(Device):
    """Hybrid vsock: the host side is the unix socket ``socket`` (``CONNECT <port>`` per connection)."""

    option: ClassVar[str] = "--vsock"
    head: ClassVar[str] = ""
    cid: int = opt("cid", 3)
    socket: str = opt("socket", "")
    id: str = opt("id", "vsock")


@dataclass
class Console(Device):
    option: ClassVar[str] = "--console"
    head: ClassVar[str] = ""
    file: str = opt("file", "")


@dataclass
class Fs(Device):
    option: ClassVar[str] = "--fs"
    head: ClassVar[str] = ""
    tag: str = opt("tag", "kuasar")
    socket: str = opt("socket", "")
    id: str = opt("id", "fs")


@dataclass
class Net(Device):
    option: ClassVar[str] = "--net"
    head: ClassVar[str] = ""
    id: str = opt("id", "")
    tap: str = opt("tap", "")
    mac: str = opt("mac", "")
