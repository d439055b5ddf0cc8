"""The hypervisor interface: :class:`VM`, :class:`VMFactory` and :class:`Hooks` (upstream's vm.rs shape).

The pod lifecycle (:mod:`kuasar_vmm_sandboxer.sandboxer`) is written once against these; a hypervisor
is an adapter that turns a :class:`VMSpec` into a running VM and back from its persisted record. QEMU is
the one adapter today (:mod:`kuasar_vmm_sandboxer.hypervisors.qemu`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Optional

from kuasar_vmm_sandboxer.devices import Device

__all__ = ["Nic", "VMSpec", "Pids", "VM", "VMFactory", "Hooks", "exit_code"]


@dataclass(frozen=True)
class Nic:
    """A guest NIC backed by a tap in the pod network namespace (MAC copied from the pod's veth)."""

    tap: str
    mac: str
    mtu: int = 1500


@dataclass(frozen=True)
class VMSpec:
    """Everything a factory needs to build one pod's VM."""

    id: str
    pod_dir: str
    vcpus: int
    memory_mb: int
    netns: str = ""
    nics: tuple[Nic, ...] = ()
    debug: bool = False
    log_level: str = "info"


@dataclass(frozen=True)
class Pids:
    """The host processes of a VM: the VMM, its vCPU threads, helpers (virtiofsd)."""

    vmm: int
    vcpus: tuple[int, ...] = ()
    affiliated: tuple[int, ...] = ()


class VM(abc.ABC):
    """One running (or startable) VM.

    Resource handling: :meth:`start` owns the spawned processes until :meth:`stop`; :meth:`close`
    only releases the sandboxer's handles (watches, connections) and leaves the VM running.
    """

    @abc.abstractmethod
    async def start(self) -> int:
        """Spawn the VMM and return its pid once it accepts control connections.

        :raise Internal: the VMM could not be started (message carries its stderr).
        """

    @abc.abstractmethod
    async def stop(self, force: bool, timeout: float = 10.0) -> None:
        """Stop the VM: graceful unless ``force``, then a control-channel quit, then SIGKILL. Idempotent."""

    @abc.abstractmethod
    async def wait(self) -> int:
        """Until the VMM exits; its exit code (255 when not ours to reap)."""

    @abc.abstractmethod
    def watch(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(exit_code)`` once when the VMM exits (no task per VM)."""

    @abc.abstractmethod
    async def pids(self) -> Pids:
        """The VMM pid, its vCPU thread ids and helper pids."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """:raise Unavailable: the VMM's control channel does not answer."""

    @abc.abstractmethod
    async def hot_attach(self, device: Device) -> None:
        """Add a device to the running VM. :raise Internal: the VMM refused."""

    @abc.abstractmethod
    async def hot_detach(self, device_id: str) -> None:
        """Remove a hot-plugged device. :raise Internal: the VMM refused."""

    @property
    @abc.abstractmethod
    def agent_socket(self) -> str:
        """Host unix socket of the guest agent channel (virtio-serial chardev or hybrid vsock)."""

    @abc.abstractmethod
    def record(self) -> dict[str, Any]:
        """What to persist to re-attach after a sandboxer restart (:meth:`VMFactory.recover`)."""

    def close(self) -> None:
        """Drop watches and handles; the VM keeps running."""


class VMFactory(abc.ABC):
    """Builds VMs of one hypervisor from a spec, and re-attaches to persisted ones."""

    @abc.abstractmethod
    def create(self, spec: VMSpec) -> VM:
        """A VM object for ``spec`` (nothing started yet)."""

    @abc.abstractmethod
    def attach(self, spec: VMSpec, record: dict[str, Any]) -> VM:
        """A handle on a VM started earlier (from :meth:`VM.record`), without checking it."""

    @abc.abstractmethod
    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> VM:
        """Re-attach to a running VM. :raise Unavailable: it is gone or does not answer."""


class Hooks:
    """Per-hypervisor adjustments around the lifecycle; the defaults do nothing."""

    def pre_start(self, spec: VMSpec) -> VMSpec:
        return spec

    async def post_start(self, vm: VM) -> None:
        return None

    async def post_stop(self, vm: VM) -> None:
        return None


def exit_code(status: Optional[int]) -> int:
    """A VMM exit code for Wait: the reaped status, or 255 when unknown."""
    return 255 if status is None else status
