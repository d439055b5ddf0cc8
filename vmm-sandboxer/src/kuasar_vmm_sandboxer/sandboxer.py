"""VmmSandboxer: the pod lifecycle written once against the VM interface.

Start: network (taps + mirrors in the pod netns) -> pod cgroup -> VM spawn (QMP ready) -> relay attach
-> guest agent Check (boot timeout: the VM is killed and started once more) -> SetupSandbox -> Ready
-> guest event forwarding to containerd (:mod:`kuasar_vmm_sandboxer.events`, also for re-adopted pods).
The task address is the relay's socket of the pod, ``ttrpc+unix://<dir>/<id>/task.sock``. The VMM's
exit (pidfd, no task per pod) marks the pod NOTREADY, releases Wait and tears down its network.
A pod is a debug pod (kernel ``task.debug``: the guest serves a debug shell) when its annotation
``io.kuasar.vmm.debug`` is "true" (on the request or in the PodSandboxConfig) or ``[hypervisor].debug`` is set.
Pods are kept in a :class:`~kuasar_shared.sandbox.pods.PodTable` (every change saved atomically to
``<dir>/<id>/sandbox.json``); after a restart a Ready pod whose
QEMU (pid + start time, QMP) and guest agent still answer is re-adopted, any other is cleaned up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from typing import Any, Optional, Set

from google.protobuf import empty_pb2

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, KuasarError, Unavailable
from kuasar_shared.sandbox import CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff, encode_tasks
from kuasar_shared.sandbox.pods import PodState, PodTable, parse_time
from kuasar_shared.sandbox.taskserver import TaskServer
from kuasar_shared.task.backend import CgroupStats

from kuasar_vmm_sandboxer import bundle, network
from kuasar_vmm_sandboxer.config import VmmConfig
from kuasar_vmm_sandboxer.events import EventForwarder
from kuasar_vmm_sandboxer.guest import GuestClient
from kuasar_vmm_sandboxer.hypervisors.qemu import QemuFactory, QemuHooks
from kuasar_vmm_sandboxer.pod import VmmPod
from kuasar_vmm_sandboxer.relay.control import RelayControl
from kuasar_vmm_sandboxer.relay.server import TASK_SOCKET
from kuasar_vmm_sandboxer.vm import VM, VMSpec

__all__ = ["VmmSandboxer", "DEFAULT_CGROUP_PARENT", "DEBUG_ANNOTATION"]

log = logging.getLogger(__name__)
DEFAULT_CGROUP_PARENT = "kuasar-vmm"
DEBUG_ANNOTATION = "io.kuasar.vmm.debug"
_CPU_PERIOD = 100000
_RECOVER_CHECK = 3.0


class VmmSandboxer(Sandboxer):
    """Serves every vmm pod of one ``--dir``.

    Resource handling: owns VM watches and background clean-ups, released by :meth:`close`; VMs and the
    relay keep running.
    """

    clock_interval = 60.0

    def __init__(self, directory: str, config: VmmConfig, task_server: TaskServer, log_level: str = "info") -> None:
        self.directory = directory
        self.config = config
        self.pods: PodTable[VmmPod] = PodTable(directory, VmmPod)
        self.factory = QemuFactory(config.hypervisor)
        self.task_server = task_server
        self.relay = RelayControl(task_server.socket_path)
        self.log_level = log_level
        self._vms: dict[str, VM] = {}
        self._tasks: Set["asyncio.Task[None]"] = set()
        address = config.sandbox.containerd_ttrpc_address
        self.events: Optional[EventForwarder] = EventForwarder(address) if address else None

    # --- helpers -----------------------------------------------------------------------------
    def pod_dir(self, sandbox_id: str) -> str:
        return self.pods.pod_dir(sandbox_id)

    def guest(self, sandbox_id: str) -> GuestClient:
        return GuestClient(os.path.join(self.pod_dir(sandbox_id), TASK_SOCKET), sandbox_id)

    def _debug(self, pod: VmmPod) -> bool:
        return pod.debug or self.config.hypervisor.debug

    def _spec(self, pod: VmmPod, net: Optional[network.PodNetwork]) -> VMSpec:
        hv = self.config.hypervisor
        return VMSpec(id=pod.id, pod_dir=self.pod_dir(pod.id), vcpus=pod.vcpus or hv.vcpus,
                      memory_mb=pod.memory_mb or hv.memory_in_mb, netns=pod.netns,
                      nics=net.nics if net is not None else (), debug=self._debug(pod),
                      log_level=self.log_level)

    def _forward_events(self, pod: VmmPod) -> None:
        if self.events is not None:
            self.events.start(pod.id, self.guest(pod.id))

    def _status(self, pod: VmmPod) -> SandboxStatus:
        vm = self._vms.get(pod.id)
        info = {"vcpus": str(pod.vcpus), "memory_mb": str(pod.memory_mb), "debug": str(self._debug(pod)).lower(),
                "netns": pod.netns}
        info.update({"start_%s_ms" % k: "%.1f" % v for k, v in pod.timings.items()})
        return SandboxStatus(id=pod.id, ready=pod.state is PodState.READY,
                             pid=getattr(vm, "pid", 0) if pod.state is PodState.READY else 0,
                             created_at=parse_time(pod.created_at), exited_at=parse_time(pod.exited_at),
                             address="ttrpc+unix://" + os.path.join(self.pod_dir(pod.id), TASK_SOCKET),
                             info=info, tasks=pod.task_resources)

    def _own(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Sandboxer ---------------------------------------------------------------------------
    async def create(self, req: CreateSandbox) -> None:
        if req.netns_path and not os.path.exists(req.netns_path):
            raise InvalidArgument("sandbox %s: network namespace %s does not exist" % (req.id, req.netns_path))
        if req.host_pid:
            raise InvalidArgument("sandbox %s: a VM pod cannot use the host PID namespace (pid: NODE)" % req.id)
        hv = self.config.hypervisor
        spec = QemuHooks(req.config).pre_start(VMSpec(id=req.id, pod_dir="", vcpus=hv.vcpus,
                                                      memory_mb=hv.memory_in_mb))
        vcpus, memory = spec.vcpus, spec.memory_mb
        annotations = {**(req.config.get("annotations") or {}), **req.annotations}
        debug = annotations.get(DEBUG_ANNOTATION, "") == "true"
        pod = VmmPod(id=req.id, netns="" if req.host_network else req.netns_path, config=req.config,
                     created_at=(req.created_at or datetime.now(timezone.utc)).isoformat(), vcpus=vcpus,
                     memory_mb=memory, debug=debug)
        self.pods.add(pod)
        try:
            _write_sandbox_files(os.path.join(self.pod_dir(req.id), "shared"), req)
        except OSError:
            self.pods.remove(pod)
            raise
        log.info("sandbox %s created (%d vCPU, %d MiB, netns %s)", req.id, vcpus, memory, pod.netns or "none")

    async def start(self, id: str) -> SandboxStatus:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            pod.require(PodState.CREATED, "start")
            net: Optional[network.PodNetwork] = None
            vm: Optional[VM] = None
            try:
                begin = time.monotonic()
                if pod.netns:
                    net = await network.setup(pod.netns)
                    pod.network = net.to_json()
                self._create_cgroup(pod)
                self.pods.save(pod)
                vm = await self._boot(pod, net, begin)
                setup_begin = time.monotonic()
                await self.guest(id).setup(pod.config, net)
                pod.timings["setup"] = (time.monotonic() - setup_begin) * 1000
            except BaseException:
                await self._teardown(pod, vm)
                self.pods.save(pod)
                raise
            pod.vm = vm.record()
            self._vms[id] = vm
            self.pods.running(pod)
            vm.watch(lambda code: self._on_vm_exit(id, code))
            self._forward_events(pod)
            log.info("sandbox %s ready: QEMU pid %s, %s", id, pod.vm.get("pid"),
                     ", ".join("%s %.0f ms" % kv for kv in pod.timings.items()))
            return self._status(pod)

    async def _boot(self, pod: VmmPod, net: Optional[network.PodNetwork], begin: float) -> VM:
        """Start the VM and wait for its agent; a boot that times out is killed and retried once."""
        timeout = float(self.config.hypervisor.boot_timeout_secs)
        for attempt in (1, 2):
            vm = self.factory.create(self._spec(pod, net))
            spawn = time.monotonic()
            await vm.start()
            try:
                self._join_cgroup(pod, vm)
                await self.relay.attach(pod.id)
                attached = time.monotonic()
                await self.guest(pod.id).wait_ready(timeout)
            except (DeadlineExceeded, Unavailable) as err:
                log.error("sandbox %s: guest agent not ready (attempt %d): %s", pod.id, attempt, err)
                await self.relay.detach(pod.id)
                await vm.stop(force=True)
                if attempt == 2:
                    raise Unavailable("sandbox %s: the VM did not boot to its agent within %.0f s (twice); "
                                      "see %s" % (pod.id, timeout, os.path.join(self.pod_dir(pod.id),
                                                                                 "console.log"))) from err
                continue
            except BaseException:
                await vm.stop(force=True)
                raise
            # the VM boots while QEMU starts and the relay attaches: "agent" is QEMU spawn to agent ready
            now = time.monotonic()
            pod.timings.update(spawn=(spawn - begin) * 1000, qemu=(attached - spawn) * 1000,
                               agent=(now - spawn) * 1000)
            return vm
        raise AssertionError("unreachable")

    def _create_cgroup(self, pod: VmmPod) -> None:
        """The pod's own cgroup below its ``cgroup_parent``, limited to the VM's vCPUs + 1 and its RAM +
        ``memory_overhead_in_mb``. :raise InvalidArgument: it cannot be created."""
        parent = str(pod.config.get("linux", {}).get("cgroup_parent", "")) or DEFAULT_CGROUP_PARENT
        pod.cgroup_parent = "%s/%s" % (parent.strip("/"), pod.id)
        self.pods.create_cgroup(pod)
        overhead = self.config.hypervisor.memory_overhead_in_mb
        Cgroup.open(pod.cgroup_parent).set_resources({
            "cpu": {"period": _CPU_PERIOD, "quota": (pod.vcpus + 1) * _CPU_PERIOD},
            "memory": {"limit": (pod.memory_mb + overhead) << 20}})

    def _join_cgroup(self, pod: VmmPod, vm: VM) -> None:
        if not pod.cgroup_parent:
            return
        cgroup = Cgroup.open(pod.cgroup_parent)
        for pid in (vm.record().get("pid", 0), vm.record().get("virtiofsd_pid", 0)):
            if pid:
                cgroup.add_pid(pid)

    async def _teardown(self, pod: VmmPod, vm: Optional[VM]) -> None:
        """Undo a start: event forwarding, relay link, VM, network (the cgroup goes at shutdown)."""
        if self.events is not None:
            await self.events.stop(pod.id)
        try:
            await self.relay.detach(pod.id)
        except KuasarError as err:
            log.warning("sandbox %s: relay detach failed: %s", pod.id, err)
        if vm is not None:
            vm.close()
            await vm.stop(force=True)
        if pod.network:
            await network.destroy(network.PodNetwork.from_json(pod.network))
            pod.network = None

    def _on_vm_exit(self, sandbox_id: str, code: int) -> None:
        pod = self.pods.find(sandbox_id)
        if pod is None or pod.state is not PodState.READY:
            return
        log.warning("sandbox %s: QEMU exited with status %d", sandbox_id, code)
        self.pods.stopped(pod, code)
        self._own(self._after_exit(pod))

    async def _after_exit(self, pod: VmmPod) -> None:
        async with self.pods.lock(pod.id):
            await self._teardown(pod, self._vms.pop(pod.id, None))
            if pod.id in self.pods:
                self.pods.save(pod)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self.pods.lock(id):
            await self._stop(self.pods.get(id))

    async def _stop(self, pod: VmmPod) -> None:
        """Mark the pod stopped first (so the VM's exit during the teardown is not taken for a crash)."""
        was_ready = pod.state is PodState.READY
        self.pods.stopped(pod, 0 if was_ready else pod.exit_status)
        if was_ready:
            await self._teardown(pod, self._vms.pop(pod.id, None))
            self.pods.save(pod)
            log.info("sandbox %s stopped", pod.id)

    async def wait(self, id: str) -> ExitStatus:
        return await self.pods.wait(id)

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        return self._status(self.pods.get(id))

    async def shutdown(self, id: str) -> None:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            await self._stop(pod)
            self.pods.remove(pod)
        log.info("sandbox %s removed", id)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            if diff.added_tasks and pod.state is not PodState.READY:
                raise FailedPrecondition("sandbox %s is %s: containers can only be added to a ready pod"
                                         % (id, pod.state.value))
            done = []
            try:
                for task in diff.added_tasks:
                    if not task.rootfs:
                        raise InvalidArgument("extensions.tasks: task %s has no rootfs mounts" % task.task_id)
                    bundle.prepare(self.pod_dir(id), task.task_id, task.spec, task.rootfs)
                    done.append(task.task_id)
            except BaseException:
                for cid in done:
                    bundle.remove(self.pod_dir(id), cid)
                raise
            for task in diff.removed_tasks:
                bundle.remove(self.pod_dir(id), task.task_id)
            pod.tasks = encode_tasks(diff.new).decode()
            self.pods.save(pod)

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        return self.pods.metrics(id)

    # --- recovery ----------------------------------------------------------------------------
    async def recover(self) -> None:
        sem = asyncio.Semaphore(32)

        async def one(sandbox_id: str, pod: Any) -> None:
            async with sem:
                await self._recover(sandbox_id, pod)
        await asyncio.gather(*(one(i, pod) for i, pod in self.pods.load_all()))

    async def _recover(self, sandbox_id: str, pod: Any) -> None:
        if not isinstance(pod, VmmPod):
            log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, pod)
            await self.relay.detach(sandbox_id)
            self.pods.remove(VmmPod(id=sandbox_id))
            return
        if pod.state is PodState.READY:
            net = network.PodNetwork.from_json(pod.network) if pod.network else None
            vm: Optional[VM] = None
            try:
                vm = await self.factory.recover(self._spec(pod, net), pod.vm)
                await self.relay.attach(pod.id)
                await self.guest(pod.id).call("Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty, _RECOVER_CHECK)
            except KuasarError as err:
                log.error("sandbox %s: cannot re-attach (%s); cleaning up", pod.id, err)
                if vm is None:
                    vm = self.factory.attach(self._spec(pod, net), pod.vm)
                await self._teardown(pod, vm)
                self.pods.remove(pod)
                return
            self._vms[pod.id] = vm
            self.pods.adopt(pod)
            vm.watch(lambda code: self._on_vm_exit(pod.id, code))
            self._forward_events(pod)
        else:
            self.pods.adopt(pod)
        log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)

    async def sync_clocks(self) -> None:
        """Every :attr:`clock_interval` seconds, sync the clock of every ready guest (one task in all)."""
        while True:
            await asyncio.sleep(self.clock_interval)
            for pod in self.pods:
                if pod.state is PodState.READY:
                    try:
                        await self.guest(pod.id).sync_clock()
                    except KuasarError as err:
                        log.warning("sandbox %s: clock sync failed: %s", pod.id, err)

    async def close(self) -> None:
        for vm in self._vms.values():
            vm.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.events is not None:
            await self.events.close()
        await self.task_server.close()


def _write_sandbox_files(shared: str, req: CreateSandbox) -> None:
    """``hostname``, ``hosts`` and ``resolv.conf`` in the share (guest ``/run/kuasar/state``)."""
    os.makedirs(shared, mode=0o755, exist_ok=True)
    with open(os.path.join(shared, "hostname"), "w") as f:
        f.write((req.hostname or req.id[:63]) + "\n")
    shutil.copyfile("/etc/hosts", os.path.join(shared, "hosts"))
    dns = req.config.get("dns_config") or {}
    lines = ["nameserver %s" % s for s in dns.get("servers", [])]
    if dns.get("searches"):
        lines.append("search " + " ".join(dns["searches"]))
    if dns.get("options"):
        lines.append("options " + " ".join(dns["options"]))
    if lines:
        with open(os.path.join(shared, "resolv.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
    elif os.path.exists("/etc/resolv.conf"):
        shutil.copyfile("/etc/resolv.conf", os.path.join(shared, "resolv.conf"))
