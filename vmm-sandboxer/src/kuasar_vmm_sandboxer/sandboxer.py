"""VmmSandboxer: the shared pod lifecycle (:class:`~kuasar_shared.sandbox.lifecycle.PodSandboxer`) with a VM
from an injected :class:`~kuasar_vmm_sandboxer.vm.VMFactory` holding each pod, and the hypervisor's
:class:`~kuasar_vmm_sandboxer.vm.Hooks` called at their points.

Start: network (taps + mirrors in the pod netns) -> pod cgroup -> boot (:mod:`.boot`: VM, relay
attach, agent Check, one retry) -> SetupSandbox -> ``post_start`` -> Ready -> guest event forwarding
to containerd (:mod:`.events`). The task address is the relay's socket of the pod,
``ttrpc+unix://<dir>/<id>/task.sock``. The VMM's exit (pidfd, no task per pod) marks the pod stopped
with its exit status and tears down its network. Recovery: :mod:`.recovery`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Dict, Optional

from kuasar_shared import tracing
from kuasar_shared.errors import FailedPrecondition, KuasarError
from kuasar_shared.sandbox import CreateSandbox, SandboxStatus, TaskDiff, encode_tasks
from kuasar_shared.sandbox.lifecycle import PodSandboxer
from kuasar_shared.sandbox.observed import TypeMetrics
from kuasar_shared.sandbox.pods import PodState, parse_time
from kuasar_shared.sandbox.task_supervisor import TaskServer

from kuasar_vmm_sandboxer import clock, network
from kuasar_vmm_sandboxer.boot import Booter
from kuasar_vmm_sandboxer.config import VmmConfig
from kuasar_vmm_sandboxer.containers import apply_task_diff
from kuasar_vmm_sandboxer.events import EventForwarder
from kuasar_vmm_sandboxer.guest import GuestClient
from kuasar_vmm_sandboxer.guestfiles import write_pod_files
from kuasar_vmm_sandboxer.observed import BOOT_TO_AGENT, trace_boot, vmm_metrics
from kuasar_vmm_sandboxer.pod import VmmPod
from kuasar_vmm_sandboxer.recovery import Unrecoverable, reattach
from kuasar_vmm_sandboxer.relay.control import RelayControl
from kuasar_vmm_sandboxer.relay.names import TASK_SOCKET
from kuasar_vmm_sandboxer.resources import create_pod_cgroup, join_pod_cgroup
from kuasar_vmm_sandboxer.running import RunningVMs
from kuasar_vmm_sandboxer.vm import VM, Hooks, Nic, VMFactory, VMSpec

__all__ = ["VmmSandboxer"]

log = logging.getLogger(__name__)


class VmmSandboxer(PodSandboxer[VmmPod]):
    """Serves every vmm pod of one ``--dir``; ``task_server`` is the relay. Resource handling: owns VM
    watches and background clean-ups (:class:`.running.RunningVMs`); VMs and the relay outlive it."""

    def __init__(self, directory: str, config: VmmConfig, factory: VMFactory, hooks: Hooks,
                 task_server: TaskServer, log_level: str = "info") -> None:
        super().__init__(directory, VmmPod, task_server)
        self.type_metrics: TypeMetrics[VmmPod] = vmm_metrics()
        self.config = config
        self.factory = factory
        self.hooks = hooks
        self.relay = RelayControl(task_server.socket_path)
        factory.use_directory(directory)
        self.booter = Booter(factory, hooks, self.relay, float(config.hypervisor.boot_timeout_secs))
        self.log_level = log_level
        address = config.sandbox.containerd_ttrpc_address
        self.running = RunningVMs(EventForwarder(address) if address else None)
        #: re-attaches under way during :meth:`recover`, by pod id
        self._reattaching: Dict[str, "asyncio.Future[VM]"] = {}

    def guest(self, sandbox_id: str) -> GuestClient:
        return GuestClient(os.path.join(self.pods.pod_dir(sandbox_id), TASK_SOCKET), sandbox_id)

    def _spec(self, pod: VmmPod, net: Optional[network.PodNetwork]) -> VMSpec:
        return VMSpec(id=pod.id, pod_dir=self.pods.pod_dir(pod.id), vcpus=pod.vcpus, memory_mb=pod.memory_mb,
                      netns=pod.netns, nics=net.nics if net is not None else (),
                      debug=pod.debug or self.config.hypervisor.debug, log_level=self.log_level)

    def _status(self, pod: VmmPod) -> SandboxStatus:
        ready = pod.state is PodState.READY
        info = {"vcpus": str(pod.vcpus), "memory_mb": str(pod.memory_mb), "netns": pod.netns,
                "debug": str(pod.debug or self.config.hypervisor.debug).lower(),
                "hypervisor": self.config.hypervisor.type}
        info.update({"start_%s_ms" % k: "%.1f" % v for k, v in pod.timings.items()})
        if pod.vm.get("template"):  # restored from a VM template (QEMU), ahead of the pod when warm
            info["template"] = str(pod.vm["template"])
            info["warm"] = str(bool(pod.vm.get("warm"))).lower()
        return SandboxStatus(id=pod.id, ready=ready, pid=int(pod.vm.get("pid", 0)) if ready else 0,
                             created_at=parse_time(pod.created_at), exited_at=parse_time(pod.exited_at),
                             address="ttrpc+unix://" + os.path.join(self.pods.pod_dir(pod.id), TASK_SOCKET),
                             info=info, tasks=pod.task_resources)

    async def sync_clocks(self) -> None:
        """The periodic clock sync of every ready guest (run by the daemon as one task)."""
        await clock.sync_clocks(lambda: (self.guest(p.id) for p in self.pods if p.state is PodState.READY))

    async def prepare_default_class(self) -> None:
        """Let the factory prepare the VM class most pods have: the configured vCPUs and memory, one NIC (a
        pod network from CNI), this sandboxer's log level (templates are keyed by the kernel command line)."""
        hv = self.config.hypervisor
        await self.factory.prepare_class(VMSpec(id="default-class", pod_dir=self.directory, vcpus=hv.vcpus,
                                                memory_mb=hv.memory_in_mb, nics=(Nic(tap="", mac=""),),
                                                debug=hv.debug, log_level=self.log_level))

    async def create(self, req: CreateSandbox) -> None:
        hv = self.config.hypervisor
        spec = self.hooks.post_create(VMSpec(id=req.id, pod_dir=self.pods.pod_dir(req.id), vcpus=hv.vcpus,
                                             memory_mb=hv.memory_in_mb), req.config)
        pod = VmmPod.for_request(req, spec.vcpus, spec.memory_mb)
        self.pods.add(pod)
        try:
            write_pod_files(os.path.join(self.pods.pod_dir(req.id), "shared"), req)
        except OSError:
            self.pods.remove(pod)
            raise
        log.info("sandbox %s created (%d vCPU, %d MiB, netns %s)", req.id, spec.vcpus, spec.memory_mb,
                 pod.netns or "none")

    async def _start_pod(self, pod: VmmPod) -> None:
        net: Optional[network.PodNetwork] = None
        vm: Optional[VM] = None
        guest = self.guest(pod.id)
        try:
            begin = time.monotonic()
            if pod.netns:
                with tracing.span("network setup", sandbox_id=pod.id):
                    net = await network.setup(pod.netns)
                pod.network = net.to_json()
            create_pod_cgroup(self.pods, pod, self.config.hypervisor.memory_overhead_in_mb)
            self.pods.save(pod)
            with tracing.span("vm boot", sandbox_id=pod.id, hypervisor=self.config.hypervisor.type):
                vm = await self.booter.boot(self._spec(pod, net), guest, lambda pids: join_pod_cgroup(pod, pids),
                                            pod.timings, begin)
                trace_boot(pod, begin)
            self.type_metrics.observe(BOOT_TO_AGENT, pod.timings["agent"] / 1000)
            setup_begin = time.monotonic()
            with tracing.span("SetupSandbox", sandbox_id=pod.id):
                await guest.setup(pod.config, net)
            pod.timings["setup"] = (time.monotonic() - setup_begin) * 1000
            await self.hooks.post_start(vm, guest)
        except BaseException:
            await self._teardown(pod, vm)
            self.pods.save(pod)
            raise
        self._adopt_vm(pod, vm)
        log.info("sandbox %s ready: %s pid %s, %s", pod.id, self.config.hypervisor.type, pod.vm.get("pid"),
                 ", ".join("%s %.0f ms" % kv for kv in pod.timings.items()))
        # no await between here and PodSandboxer.start marking the pod READY: the exit watch cannot fire first

    def _adopt_vm(self, pod: VmmPod, vm: VM) -> None:
        pod.vm = vm.record()
        self.running.add(pod.id, vm, self.guest(pod.id), lambda code: self._on_vm_exit(pod.id, code))

    async def _stop_pod(self, pod: VmmPod) -> None:
        vm = self.running.pop(pod.id)
        if vm is not None:
            await _logged(pod.id, "pre_stop", self.hooks.pre_stop(vm))
        await self._teardown(pod, vm)
        self.pods.save(pod)

    async def _teardown(self, pod: VmmPod, vm: Optional[VM]) -> None:
        """Undo a start: event forwarding, relay link, VM (+ ``post_stop``), network (not the cgroup)."""
        await self.running.release(pod.id)
        await _logged(pod.id, "relay detach", self.relay.detach(pod.id))
        if vm is not None:
            vm.close()
            await vm.stop(force=True)
            await _logged(pod.id, "post_stop", self.hooks.post_stop(vm))
        if pod.network:
            await network.destroy(network.PodNetwork.from_json(pod.network))
            pod.network = None

    def _on_vm_exit(self, sandbox_id: str, code: int) -> None:
        pod = self.pods.find(sandbox_id)
        if pod is None or pod.state is not PodState.READY:
            return
        log.warning("sandbox %s: the VMM exited with status %d", sandbox_id, code)
        self.pods.stopped(pod, code)
        self.running.spawn(self._after_exit(pod))

    async def _after_exit(self, pod: VmmPod) -> None:
        async with self.pods.lock(pod.id):
            await self._teardown(pod, self.running.pop(pod.id))
            if pod.id in self.pods:
                self.pods.save(pod)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        """Prepare added containers' bundles on the share, remove removed ones, record the list."""
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            if diff.added_tasks and pod.state is not PodState.READY:
                raise FailedPrecondition("sandbox %s is %s: containers can only be added to a ready pod"
                                         % (id, pod.state.value))
            apply_task_diff(self.pods.pod_dir(id), diff)
            pod.tasks = encode_tasks(diff.new).decode()
            self.pods.save(pod)

    async def _drop_unreadable(self, sandbox_id: str) -> None:
        await self.relay.detach(sandbox_id)
        await super()._drop_unreadable(sandbox_id)

    async def recover(self) -> None:
        """Re-attach every ready pod's VM at once (each mostly waits on its VMM and guest: a restart's
        downtime would grow by that per pod), then adopt or clean up each pod in order as the shared
        recovery does."""
        for _, pod in self.pods.load_all():
            if isinstance(pod, VmmPod) and pod.state is PodState.READY:
                self._reattaching[pod.id] = asyncio.ensure_future(self._reattach(pod))
        try:
            await super().recover()
        finally:
            pending = list(self._reattaching.values())
            self._reattaching.clear()
            for future in pending:
                future.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _reattach(self, pod: VmmPod) -> Awaitable[VM]:
        net = network.PodNetwork.from_json(pod.network) if pod.network else None
        return reattach(self.factory, self.relay, self.guest(pod.id), self._spec(pod, net), pod.vm)

    async def _readopt(self, pod: VmmPod) -> bool:
        """Re-attach a ready pod (:mod:`.recovery`), or tear it down and remove it."""
        if pod.state is not PodState.READY:
            return True
        try:
            vm = await (self._reattaching.pop(pod.id, None) or self._reattach(pod))
        except Unrecoverable as err:
            log.error("sandbox %s: cannot re-attach (%s); cleaning up", pod.id, err)
            await self._teardown(pod, err.vm)
            self.pods.remove(pod)
            return False
        self._adopt_vm(pod, vm)
        return True

    async def close(self) -> None:
        await self.running.close()
        await self.factory.close()
        await super().close()


async def _logged(sandbox_id: str, what: str, call: Awaitable[None]) -> None:
    """Await a step of a stop that must not prevent the rest of it; a failure is logged."""
    try:
        await call
    except KuasarError as err:
        log.warning("sandbox %s: %s failed: %s", sandbox_id, what, err)
