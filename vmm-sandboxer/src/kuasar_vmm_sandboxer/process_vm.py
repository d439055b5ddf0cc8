"""ProcessVM: what every hypervisor backend's VM shares — a VMM host process (and an optional helper,
virtiofsd) spawned as our children inside the pod's network namespace, watched by pidfd, killed by pid
(+ start time, so a reused pid is never signalled), and re-adopted from its record after a restart.

The VMM is spawned (never daemonized) in its own session through ``nsenter --net`` when the pod has a
network namespace (``nsenter`` execs it, so the pid stays the VMM's); its stdout/stderr go to
``<pod dir>/<log_name>``. Subclasses build the command line and speak the control channel.
"""
from __future__ import annotations

import abc
import asyncio
import logging
import os
import signal
from typing import Any, Awaitable, Callable, ClassVar, Generic, Optional, Sequence, Type, TypeVar, cast

from kuasar_shared import process
from kuasar_shared.errors import FailedPrecondition, Internal, Unavailable
from kuasar_shared.process_identity import ExitWatch, is_same_process, kill, start_time, wait_exit

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.kvm import KvmProbe, probe_kvm
from kuasar_vmm_sandboxer.vm import VM, VMFactory, VMSpec, exit_code

__all__ = ["ProcessVM", "ProcessVMFactory"]

log = logging.getLogger(__name__)


class ProcessVM(VM, abc.ABC):
    """A VM whose VMM is one host process. Files live in ``<pod dir>``; ``shared/`` is the pod share."""

    #: the VMM's name in messages ("QEMU") and its output file in the pod dir
    vmm_name = "VMM"
    log_name = "vmm.log"

    def __init__(self, spec: VMSpec) -> None:
        self.spec = spec
        self.pid = 0
        self.pid_start: Optional[int] = None
        self.virtiofsd_pid = 0
        self.virtiofsd_start: Optional[int] = None
        self._proc: Optional[process.Process] = None
        self._helper: Optional[process.Process] = None
        self._watch: Optional[ExitWatch] = None
        self._status_task: Optional["asyncio.Future[Any]"] = None

    def __repr__(self) -> str:
        return "%s(id=%s, pid=%d)" % (type(self).__name__, self.spec.id, self.pid)

    def path(self, name: str) -> str:
        return os.path.join(self.spec.pod_dir, name)

    @property
    def shared_dir(self) -> str:
        return self.path("shared")

    def in_netns(self, argv: list[str]) -> list[str]:
        if not self.spec.netns:
            return argv
        return ["nsenter", "--net=%s" % self.spec.netns, "--"] + argv

    def prepare(self, sockets: Sequence[str]) -> None:
        """Create the share, remove stale sockets of an earlier attempt."""
        os.makedirs(self.shared_dir, mode=0o755, exist_ok=True)
        for name in sockets:
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass

    def spawn(self, argv: list[str]) -> None:
        """Spawn the VMM (``argv`` already wrapped for the netns). :raise CommandError: cannot exec."""
        log_fd = os.open(self.path(self.log_name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self._proc = process.spawn(argv, stdin=process.DEVNULL, stdout=log_fd, stderr=log_fd,
                                       start_new_session=True)
        except BaseException:
            if self._helper is not None:  # a virtiofsd started for this VM must not outlive the failure
                self._helper.kill()
            raise
        finally:
            os.close(log_fd)
        self.pid, self.pid_start = self._proc.pid, start_time(self._proc.pid)

    async def launch(self, argv: list[str], ready: Callable[[], Awaitable[None]]) -> int:
        """Spawn the VMM and wait for ``ready()`` (its control channel answering, and what else it needs).

        :raise Internal: it did not get ready; it is stopped, and the message ends with its output.
        """
        self.spawn(argv)
        try:
            await ready()
        except (Unavailable, Internal) as err:
            await self.stop(force=True)
            raise Internal("sandbox %s: %s did not start: %s; %s"
                           % (self.spec.id, self.vmm_name, err, self.log_tail())) from err
        log.info("sandbox %s: %s pid %d started", self.spec.id, self.vmm_name, self.pid)
        return self.pid

    def running(self) -> bool:
        """The spawned VMM has not exited (for start-up waits)."""
        return self._proc is not None and self._proc.returncode is None

    async def start_virtiofsd(self, argv: list[str], socket: str) -> None:
        """Spawn virtiofsd and wait for its socket. :raise Internal: it did not create it within 5 s."""
        self._helper = process.spawn(self.in_netns(argv), stdin=process.DEVNULL, start_new_session=True)
        self.virtiofsd_pid, self.virtiofsd_start = self._helper.pid, start_time(self._helper.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not os.path.exists(socket):
            if self._helper.returncode is not None or loop.time() > deadline:
                self._helper.kill()
                raise Internal("sandbox %s: virtiofsd did not create its socket %s" % (self.spec.id, socket))
            await asyncio.sleep(0.005)

    def log_tail(self) -> str:
        try:
            with open(self.path(self.log_name), "rb") as f:
                return "%s said: %s" % (self.vmm_name, f.read()[-2000:].decode(errors="replace").strip())
        except OSError:
            return "no %s output" % self.vmm_name

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.returncode is None
        return is_same_process(self.pid, self.pid_start)

    async def exited_within(self, seconds: float) -> bool:
        try:
            if self._proc is not None:
                await asyncio.wait_for(self._proc.wait(), seconds)
            else:
                await asyncio.wait_for(wait_exit(self.pid), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def kill(self) -> None:
        """SIGKILL the VMM if it still runs, then the helper."""
        if self.pid and self.alive():
            kill(self.pid, signal.SIGKILL)
            await self.exited_within(10.0)
        if self.virtiofsd_pid and (self._helper is not None and self._helper.returncode is None
                                   or is_same_process(self.virtiofsd_pid, self.virtiofsd_start)):
            kill(self.virtiofsd_pid, signal.SIGKILL)
            await asyncio.wait_for(wait_exit(self.virtiofsd_pid), 5.0)

    def watch(self, callback: Callable[[int], None]) -> None:
        def fired() -> None:
            self._watch = None
            status = self._proc.returncode if self._proc is not None else None
            if self._proc is not None and status is None:
                # the pidfd fires before the reaper delivered the status: take it from there
                self._status_task = asyncio.ensure_future(self._proc.wait())
                self._status_task.add_done_callback(
                    lambda f: None if f.cancelled() else callback(f.result().status))
                return
            callback(exit_code(status))
        if self._watch is not None:
            self._watch.cancel()
        self._watch = ExitWatch(self.pid, fired)

    def affiliated(self) -> tuple[int, ...]:
        return (self.virtiofsd_pid,) if self.virtiofsd_pid else ()

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "pid_start": self.pid_start, "virtiofsd_pid": self.virtiofsd_pid,
                "virtiofsd_start": self.virtiofsd_start}

    def adopt(self, record: dict[str, Any]) -> None:
        """Take over a VM started by an earlier sandboxer (no child handles, pidfd watches only)."""
        self.pid, self.pid_start = int(record.get("pid", 0)), record.get("pid_start")
        self.virtiofsd_pid, self.virtiofsd_start = int(record.get("virtiofsd_pid", 0)), record.get("virtiofsd_start")

    def take_over(self, other: "ProcessVM") -> None:
        """Become ``other``, a running VM of this one's kind whose files were moved to this VM's directory
        (a warm VM a pod takes): its child handles and identity are ours from now on, ``other`` drops them."""
        other.close()
        self._proc, self._helper = other._proc, other._helper
        self.pid, self.pid_start = other.pid, other.pid_start
        self.virtiofsd_pid, self.virtiofsd_start = other.virtiofsd_pid, other.virtiofsd_start
        other._proc = other._helper = None
        other.pid = other.virtiofsd_pid = 0

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._status_task is not None:
            self._status_task.cancel()
            self._status_task = None


V = TypeVar("V", bound=ProcessVM)
C = TypeVar("C", bound=HypervisorConfig)


class ProcessVMFactory(VMFactory, Generic[V, C]):
    """The factory of a :class:`ProcessVM` backend: a subclass names its config type and builds its VM
    (:meth:`new_vm`); attaching adopts the record, recovering checks it is the same process and that it
    answers on its control channel. ``unusable`` (set once, at start-up) fails every pod's Start: for a
    backend that ``needs_kvm`` (no emulation), a host where KVM cannot run a stock guest."""

    config_type: ClassVar[Type[HypervisorConfig]] = HypervisorConfig
    needs_kvm: ClassVar[bool] = False

    def __init__(self, config: HypervisorConfig, kvm: Optional[KvmProbe] = None) -> None:
        """:param kvm: what this host's KVM can do (probed here when None and the backend needs KVM)."""
        if not isinstance(config, self.config_type):
            raise TypeError("%s needs a %s, got %s" % (type(self).__name__, self.config_type.__name__,
                                                       type(config).__name__))
        self.config: C = cast(C, config)
        #: why no pod can start on this host; None when they can
        self.unusable: Optional[str] = None
        if self.needs_kvm:
            probe = kvm if kvm is not None else probe_kvm()
            if probe.usable:
                log.info('[hypervisor] type = "%s": KVM: %s', config.type, probe.reason)
            else:
                self.unusable = ('[hypervisor] type = "%s" needs KVM (it cannot emulate), and %s; use type = '
                                 '"qemu" (it falls back to TCG) on this host' % (config.type, probe.reason))
                log.error("%s", self.unusable)

    @abc.abstractmethod
    def new_vm(self, spec: VMSpec) -> V:
        """A VM object for ``spec``, nothing started."""

    def create(self, spec: VMSpec) -> V:
        """:raise FailedPrecondition: this host cannot run the configured VM (:attr:`unusable`)."""
        if self.unusable:
            raise FailedPrecondition("sandbox %s: %s" % (spec.id, self.unusable))
        return self.new_vm(spec)

    def attach(self, spec: VMSpec, record: dict[str, Any]) -> V:
        vm = self.new_vm(spec)
        vm.adopt(record)
        return vm

    async def recover(self, spec: VMSpec, record: dict[str, Any]) -> V:
        vm = self.attach(spec, record)
        if not is_same_process(vm.pid, vm.pid_start):
            raise Unavailable("sandbox %s: %s pid %d is gone" % (spec.id, vm.vmm_name, vm.pid))
        await vm.ping()
        return vm
