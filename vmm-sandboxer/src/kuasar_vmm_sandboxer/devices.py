"""Declarative hypervisor devices: a dataclass per device, one renderer for every command line.

A device says which option it becomes (``-device``, ``-chardev``, ``-object``...) and, per field,
which ``key=`` it renders to (field metadata ``key``); the field named by ``head`` is rendered
first without a key (the driver or backend name). ``None`` and ``""`` are left out, booleans become
``on``/``off``. Keeping devices as data means argv is tested as data and a hypervisor adapter only
lists devices; it never builds strings.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Optional

__all__ = ["Device", "opt", "flag", "render", "render_all", "Transport"]


def opt(key: str, default: Any = None) -> Any:
    """A device field rendered as ``key=value``."""
    return field(default=default, metadata={"key": key})


def flag(key: str, default: bool = False) -> Any:
    """A boolean field rendered as a bare ``key`` when true (StratoVirt's ``server,nowait``)."""
    return field(default=default, metadata={"key": key, "flag": True})


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    text = str(value)
    return text.replace(",", ",,")  # QEMU's escape for commas inside a value


@dataclass
class Device:
    """Base of every device; subclasses set :attr:`option` and :attr:`head`."""

    option: ClassVar[str] = "-device"
    #: the field rendered first, without ``key=``
    head: ClassVar[str] = "driver"

    def args(self) -> list[str]:
        """This device's argv fragment, e.g. ``["-device", "virtio-rng-pci,rng=rng0,id=rng"]``."""
        parts: list[str] = []
        first: Optional[str] = None
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == self.head:
                first = _value(value)
                continue
            key = f.metadata.get("key")
            if key is None or value is None or value == "":
                continue
            if f.metadata.get("flag"):
                if value:
                    parts.append(key)
                continue
            parts.append("%s=%s" % (key, _value(value)))
        return [self.option, ",".join(([first] if first else []) + parts)]


def render(device: Device) -> list[str]:
    return device.args()


def render_all(devices: Iterable[Device]) -> list[str]:
    out: list[str] = []
    for device in devices:
        out += device.args()
    return out


@dataclass(frozen=True)
class Transport:
    """How virtio devices attach: ``pci`` (q35/pc: ``virtio-X-pci``) or ``mmio`` (microvm: ``virtio-X-device``)."""

    kind: str

    def driver(self, base: str) -> str:
        return "%s-%s" % (base, "device" if self.kind == "mmio" else "pci")

    @classmethod
    def for_machine(cls, machine_type: str) -> "Transport":
        """From a machine type, options included (``microvm,...`` is mmio)."""
        return cls("mmio" if machine_type.split(",")[0] == "microvm" else "pci")
