"""The hypervisor interface: :class:`VM`, :class:`VMFactory` and :class:`Hooks` (upstream's vm.rs shape).

The pod lifecycle (:mod:`kuasar_vmm_sandboxer.sandboxer`) is written once against these; a hypervisor
is an adapter that turns a :class:`VMSpec` into a running VM and back from its persisted record (one
package per hypervisor under :mod:`kuasar_vmm_sandboxer.hypervisors`). Devices are not hot-plugged:
the pod share, NICs and the agent channel are all on the command line, and containers reach the guest
through the share, so the VM interface has no hot_attach/hot_detach.
"""
from __future__ import annotations

import abc
import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

from kuasar_shared.errors import KuasarError

if TYPE_CHECKING:
    from kuasar_vmm_sandboxer.guest import GuestClient

__all__ = ["Nic", "VMSpec", "Pids", "VM", "VMFactory", "Hooks", "PodResourceHooks", "pod_resources",
           "exit_code"]

log = logging.getLogger(__name__)
_MIN_MEMORY_MB = 128


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

        :raise Internal: the VMM could not be started (message carries its output).
        """

    @abc.abstractmethod
    async def stop(self, force: bool, timeout: float = 10.0) -> None:
        """Stop the VM: graceful unless ``force``, then the control channel, then SIGKILL. Idempotent."""

    @abc.abstractmethod
    def watch(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(exit_code)`` once when the VMM exits (no task per VM)."""

    @abc.abstractmethod
    async def pids(self) -> Pids:
        """The VMM pid, its vCPU thread ids and helper pids (what goes into the pod cgroup)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """:raise Unavailable: the VMM's control channel does not answer."""

    @property
    def agent_address(self) -> str:
        """How the relay reaches the guest agent: "" for the virtio-serial port multiplexed over the
        chardev socket ``<pod dir>/agent.sock``, ``hvsock://<path>:<port>`` for a hybrid vsock socket."""
        return ""

    @abc.abstractmethod
    def record(self) -> dict[str, Any]:
        """What to persist to re-attach after a sandboxer restart (:meth:`VMFactory.recover`); its
        ``"pid"`` is the VMM's (Status reports it)."""

    def close(self) -> None:
        """Drop watches and handles; the VM keeps running."""


class VMFactory(abc.ABC):
    """Builds VMs of one hypervisor from a spec, and re-attaches to persisted ones."""

    @abc.abstractmethod
    def create(self, spec: VMSpec) -> VM:
        """A VM object for ``spec`` (nothing started yet).

        :raise FailedPrecondition: this host cannot run the configured VM.
        """

    @abc.abstractmethod
    def attach(self, spec: VMSpec, record: dict[str, Any]) -> VM:
        """A handle on a VM started earlier (from :meth:`VM.record`), without checking it."""

    @abc.abstractmethod
    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> VM:
        """Re-attach to a running VM. :raise Unavailable: it is gone or does not answer."""

    def use_directory(self, directory: str) -> None:
        """The sandboxer's ``--dir``, before it recovers its pods: where a factory may keep VMs that belong to no
        pod yet (QEMU's warm pool), on the pods' own filesystem. A hypervisor without such VMs ignores it."""

    async def close(self) -> None:
        """The sandboxer stops: stop the VMs that belong to no pod (pods' VMs keep running)."""

    async def prepare_class(self, spec: VMSpec) -> None:
        """Make ready, before any pod asks, what VMs of ``spec``'s class start from (QEMU: a template).

        Called once at sandboxer start; failures are the factory's to log (the first pod then pays). A
        hypervisor that starts every VM from scratch has nothing to prepare.
        """


class Hooks:
    """Per-hypervisor steps at fixed points of the lifecycle (upstream's five); the defaults do nothing.

    Called by :class:`~kuasar_vmm_sandboxer.sandboxer.VmmSandboxer`: ``post_create`` in Create (its
    spec's vCPUs and memory are recorded with the pod), ``pre_start`` before each boot attempt,
    ``post_start`` once the guest is set up (a failure fails Start), ``pre_stop`` before the VM is
    stopped (the relay has let go of the guest by then) and ``post_stop`` after it is gone (failures
    there are logged: the pod stops anyway).
    """

    def post_create(self, spec: VMSpec, pod_config: Mapping[str, Any]) -> VMSpec:
        return spec

    async def pre_start(self, spec: VMSpec) -> VMSpec:
        return spec

    async def post_start(self, vm: VM, guest: "GuestClient") -> None:
        return None

    async def pre_stop(self, vm: VM) -> None:
        return None

    async def post_stop(self, vm: VM) -> None:
        return None


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def pod_resources(config: Mapping[str, Any], vcpus: int, memory_mb: int) -> tuple[int, int]:
    """vCPUs and memory (MiB) for a pod from CRI ``linux.resources`` (the decoded PodSandboxConfig),
    upstream's rule: ceil(cpu_quota / cpu_period) vCPUs, the memory limit as RAM; the configured
    defaults when a limit is absent."""
    res = config.get("linux", {}).get("resources", {}) or {}
    quota, period = _int(res.get("cpu_quota")), _int(res.get("cpu_period"))
    if quota > 0 and period > 0:
        vcpus = max(1, math.ceil(quota / period))
    limit = _int(res.get("memory_limit_in_bytes"))
    if limit > 0:
        memory_mb = max(_MIN_MEMORY_MB, limit // (1 << 20))
    return vcpus, memory_mb


class PodResourceHooks(Hooks):
    """What upstream's QEMU, StratoVirt and Cloud Hypervisor hooks all do: size the VM from the pod's
    resources, and sync the guest clock once it runs (the periodic sync follows)."""

    def post_create(self, spec: VMSpec, pod_config: Mapping[str, Any]) -> VMSpec:
        vcpus, memory = pod_resources(pod_config, spec.vcpus, spec.memory_mb)
        return replace(spec, vcpus=vcpus, memory_mb=memory)

    async def post_start(self, vm: VM, guest: "GuestClient") -> None:
        try:
            await guest.sync_clock()
        except KuasarError as err:  # upstream logs it too: the periodic sync tries again
            log.warning("sandbox %s: clock sync after start failed: %s", guest.id, err)


def exit_code(status: Optional[int]) -> int:
    """A VMM exit code for Wait: the reaped status, or 255 when unknown."""
    return 255 if status is None else status
