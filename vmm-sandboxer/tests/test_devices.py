from dataclasses import dataclass
from typing import ClassVar

from kuasar_vmm_sandboxer.devices import Device, Transport, opt, render_all


@dataclass
class _Toy(Device):
    driver: str = "toy"
    flag: bool = opt("flag", True)
    name: str = opt("name", "")
    path: str = opt("path", "")


@dataclass
class _Obj(Device):
    option: ClassVar[str] = "-object"
    head: ClassVar[str] = "kind"
    kind: str = "thing"
    id: str = opt("id", "a")


def test_render_skips_empty_and_escapes_commas():
    assert _Toy(path="/a,b").args() == ["-device", "toy,flag=on,path=/a,,b"]
    assert _Toy(flag=False, name="n").args() == ["-device", "toy,flag=off,name=n"]


def test_option_and_head_per_class():
    assert render_all([_Obj(), _Toy()]) == ["-object", "thing,id=a", "-device", "toy,flag=on"]


def test_transport():
    assert Transport.for_machine("microvm").driver("virtio-net") == "virtio-net-device"
    assert Transport.for_machine("q35").driver("virtio-net") == "virtio-net-pci"
