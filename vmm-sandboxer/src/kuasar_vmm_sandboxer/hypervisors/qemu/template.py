"""VM templates: a pod VM restored from a saved, booted VM instead of booting its kernel and agent.

A template is one class of VM (kernel, initrd, QEMU, machine, CPU, accelerator, vCPUs, memory, kernel
parameters, device set), keyed by :func:`template_key`'s digest. It is made by booting that VM with
its RAM in a file (``share=on``) and ``task.template``, waiting for vmm-task to serve (and to have
imported its Task services), then stopping it and migrating its device state to a file with
``x-ignore-shared`` (the shared RAM is the file itself). A pod VM maps the RAM file copy-on-write and
loads the state (:class:`~.vm.RamFile`): VMs share the template's pages until they write them.

What a template cannot carry is made per pod after the restore, by SetupSandbox in the guest: the
share (mounted then, from the pod's own path), fresh entropy (vmgenid + a reseed from the host RNG),
the hostname, and the NICs, which take the pod's MACs. A restored VM keeps no link to its template:
removing or rebuilding one never affects running pods (their mapping outlives the file).

Templates live in ``template_dir/<digest>/`` (``memory``, ``state``, ``template.json``), made under a
temporary name and renamed into place, so they survive restarts and a half-made one is never used.
A template whose image or QEMU changed can never be used again and is removed when the next one is made.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass, replace
from typing import Any, AsyncIterator, Optional

from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.errors import FailedPrecondition, KuasarError, NotFound, Unavailable
from kuasar_shared.ttrpc import Client
from kuasar_shared.ttrpc.mux import MuxConnection

from kuasar_vmm_sandboxer.config import SHARE_VIRTIOFS
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM, RamFile
from kuasar_vmm_sandboxer.vm import Nic, VMSpec

__all__ = ["TemplateInfo", "TemplateStore", "Templates", "agent_session", "nic_mac", "template_key", "unusable_reason",
           "FORMAT"]

log = logging.getLogger(__name__)

#: bumped when what a template holds changes meaning (old ones are then rebuilt)
FORMAT = 1
MEMORY, STATE, META = "memory", "state", "template.json"
#: a template being made (short: its sockets live there, and unix socket paths are < 108 bytes)
_BUILD_PREFIX = ".b-"


def _file_id(path: str) -> list[Any]:
    """Path, size and mtime: what changes when an image or QEMU is rebuilt or upgraded."""
    try:
        st = os.stat(path)
    except OSError:
        return [path, None]
    return [path, st.st_size, st.st_mtime_ns]


def nic_mac(index: int) -> str:
    """A template NIC's MAC (locally administered); the guest gives the pod's MAC to it at SetupSandbox."""
    return "02:6b:75:00:00:%02x" % index


def unusable_reason(config: QemuConfig, spec: VMSpec) -> Optional[str]:
    """Why ``spec`` cannot start from a template with ``config``, or None."""
    if config.share_fs == SHARE_VIRTIOFS:
        return "virtio-fs needs guest RAM shared with virtiofsd, and a restored VM maps it private"
    if config.vsock:
        return "a vhost-vsock device cannot be restored with another guest CID"
    if config.image_path:
        return "a root disk image (image_path) is not part of templates"
    if config.enable_mem_prealloc:
        return "enable_mem_prealloc would copy the template's whole RAM into every VM"
    return None


def _image_identity(config: QemuConfig) -> list[Any]:
    return [FORMAT, _file_id(config.qemu_path), _file_id(config.kernel_path), _file_id(config.initrd_path)]


def template_key(config: QemuConfig, spec: VMSpec) -> tuple[str, dict[str, Any]]:
    """(digest, description) of the VM class of ``spec``: the image, QEMU and every setting that shapes the
    VM's state (not the pod's id, paths, taps or MACs, which a restored VM gets as its own)."""
    vm = QemuVM(replace(spec, nics=tuple(Nic(tap="", mac=nic_mac(i)) for i in range(len(spec.nics)))), config,
                RamFile(path=""))
    described = {
        "image": _image_identity(config),
        "machine": config.machine_type, "machine_accelerators": config.machine_accelerators,
        "accel": config.accel, "cpu": config.cpu, "tb_size_mb": config.tcg_tb_size_mb,
        "vcpus": spec.vcpus, "max_vcpus": max(spec.vcpus, config.default_max_vcpus), "memory_mb": spec.memory_mb,
        "nics": len(spec.nics), "kernel_params": vm.kernel_params(), "firmware": config.firmware,
        "entropy_source": config.entropy_source, "share_fs": config.share_fs,
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    return digest, described


@dataclass(frozen=True)
class TemplateInfo:
    """A made template, as ``template.json`` describes it."""

    digest: str
    path: str
    created: str
    vcpus: int
    memory_mb: int
    nics: int
    build_seconds: float
    bytes_on_disk: int

    @property
    def ram(self) -> RamFile:
        return RamFile(path=os.path.join(self.path, MEMORY), incoming=os.path.join(self.path, STATE),
                       template=self.digest)


class TemplateStore:
    """The templates in one directory."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def _info(self, digest: str) -> Optional[TemplateInfo]:
        path = os.path.join(self.directory, digest)
        try:
            with open(os.path.join(path, META)) as handle:
                meta = json.load(handle)
            if not all(os.path.isfile(os.path.join(path, f)) for f in (MEMORY, STATE)):
                return None
            size = sum(os.stat(os.path.join(path, f)).st_blocks * 512 for f in os.listdir(path)
                       if os.path.isfile(os.path.join(path, f)))
            return TemplateInfo(digest=digest, path=path, created=str(meta["created"]),
                                vcpus=int(meta["key"]["vcpus"]), memory_mb=int(meta["key"]["memory_mb"]),
                                nics=int(meta["key"]["nics"]), build_seconds=float(meta["build_seconds"]),
                                bytes_on_disk=size)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def find(self, digest: str) -> Optional[TemplateInfo]:
        """The complete template ``digest``, or None."""
        return self._info(digest)

    def all(self) -> list[TemplateInfo]:
        """Every complete template, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = [self._info(n) for n in names if not n.startswith(".")]
        return sorted((t for t in found if t is not None), key=lambda t: t.created)

    def remove(self, digest_prefix: str) -> list[str]:
        """Remove the templates whose digest starts with ``digest_prefix`` ("" = all, with any half-made
        one). :raise NotFound: a non-empty prefix names none."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        gone = [n for n in names if n.startswith(digest_prefix) and not n.startswith(".")]
        if not digest_prefix:
            gone += [n for n in names if n.startswith(_BUILD_PREFIX)]
        elif not gone:
            raise NotFound("no template %s* in %s" % (digest_prefix, self.directory))
        for name in gone:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        return gone

    def remove_stale(self, image: list[Any]) -> list[str]:
        """Remove the templates of another image or QEMU (they can never be used again)."""
        stale: list[str] = []
        for info in self.all():
            try:
                with open(os.path.join(info.path, META)) as handle:
                    if json.load(handle)["key"]["image"] == image:
                        continue
            except (OSError, ValueError, KeyError):
                pass
            stale += self.remove(info.digest)
        return stale


class Templates:
    """The factory's template policy: which template a pod VM restores from, made at first use."""

    def __init__(self, config: QemuConfig) -> None:
        self.config = config
        self.store = TemplateStore(config.template_dir)
        self._locks: dict[str, asyncio.Lock] = {}

    async def ram_for(self, spec: VMSpec) -> Optional[RamFile]:
        """The RAM file ``spec``'s VM restores from, or None to boot cold (``auto``; the log says why).

        :raise FailedPrecondition: ``required`` and the pod cannot have a template.
        """
        reason = unusable_reason(self.config, spec)
        if reason is None:
            try:
                return (await self.get(spec)).ram
            except (KuasarError, OSError) as err:
                reason = "making its template failed: %s" % err
        if self.config.template == "required":
            raise FailedPrecondition('sandbox %s: [hypervisor].template = "required", but %s' % (spec.id, reason))
        log.warning("sandbox %s: booting without a template: %s", spec.id, reason)
        return None

    async def get(self, spec: VMSpec) -> TemplateInfo:
        """The template of ``spec``'s class, made now when there is none. :raise KuasarError: making it failed."""
        digest, described = template_key(self.config, spec)
        found = self.store.find(digest)
        if found is not None:
            return found
        lock = self._locks.setdefault(digest, asyncio.Lock())
        async with lock:
            found = self.store.find(digest)
            if found is None:
                found = await self._make(digest, described, spec)
        return found

    async def _make(self, digest: str, described: dict[str, Any], spec: VMSpec) -> TemplateInfo:
        begin = time.monotonic()
        os.makedirs(self.config.template_dir, mode=0o700, exist_ok=True)
        for name in self.store.remove_stale(described["image"]):
            log.info("removed template %s: its image or QEMU changed", name[:12])
        work = os.path.join(self.config.template_dir, _BUILD_PREFIX + digest[:12])
        await stop_abandoned_builders(work)
        shutil.rmtree(work, ignore_errors=True)
        os.makedirs(work)
        tspec = VMSpec(id="template-" + digest[:12], pod_dir=work, vcpus=spec.vcpus, memory_mb=spec.memory_mb,
                       nics=tuple(Nic(tap="", mac=nic_mac(i)) for i in range(len(spec.nics))),
                       debug=spec.debug, log_level=spec.log_level)
        vm = QemuVM(tspec, self.config, RamFile(path=os.path.join(work, MEMORY), template=digest))
        try:
            await vm.start()
            await _wait_agent(vm.agent_socket, float(self.config.boot_timeout_secs), vm)
            await vm.qmp.execute("stop")
            await vm.qmp.execute("migrate-set-capabilities",
                                 {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
            state = os.path.join(work, STATE)
            await vm.qmp.execute("migrate", {"uri": "exec:cat > %s" % state})
            await vm.migration_done(60.0)
        except BaseException:
            await vm.stop(force=True)
            shutil.rmtree(work, ignore_errors=True)
            raise
        await vm.stop(force=True)
        for name in os.listdir(work):  # sockets and the empty share; the logs stay for whoever debugs it
            path = os.path.join(work, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif name not in (MEMORY, STATE, "console.log", "qemu.log"):
                os.unlink(path)
        seconds = round(time.monotonic() - begin, 2)
        with open(os.path.join(work, META), "w") as handle:
            json.dump({"digest": digest, "key": described, "build_seconds": seconds,
                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, handle, indent=1)
        final = os.path.join(self.config.template_dir, digest)
        os.rename(work, final)
        log.info("made template %s (%d vCPU, %d MiB, %d NICs) in %.1f s", digest[:12], spec.vcpus, spec.memory_mb,
                 len(spec.nics), seconds)
        info = self.store.find(digest)
        if info is None:
            raise Unavailable("template %s vanished after it was made" % digest[:12])
        return info


def _builders_of(work: str) -> list[int]:
    """Pids of the processes whose command line maps ``<work>/memory``: only a template VM being made there does."""
    needle = ("mem-path=" + os.path.join(work, MEMORY)).encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as handle:
                cmdline = handle.read()
        except OSError:  # gone, or a kernel thread
            continue
        if any(needle in arg.split(b",") for arg in cmdline.split(b"\0")):
            found.append(int(entry))
    return found


async def stop_abandoned_builders(work: str, timeout: float = 10.0) -> None:
    """A sandboxer killed while it made a template left that QEMU running: kill it before the next attempt.

    :raise Unavailable: it is still there after ``timeout``.
    """
    if not os.path.isdir(work):
        return
    pids = _builders_of(work)
    for pid in pids:
        log.warning("template build %s: killing QEMU pid %d left by an earlier sandboxer", work, pid)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while pids and _builders_of(work):
        if loop.time() > deadline:
            raise Unavailable("template build %s: QEMU left by an earlier sandboxer does not exit" % work)
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def agent_session(socket_path: str, timeout: float, vm: QemuVM) -> AsyncIterator[Client]:
    """A client on the agent of a VM no relay serves (a template being made, a warm VM of the pool), once it
    answers Check. On leaving, the channel is closed and the agent given time to see the host leave: it then
    waits for the next one (the pod's relay), whose first OPEN would otherwise be taken for the old host's.

    :raise Unavailable: the socket takes no connection within ``timeout``, or the VM died.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            reader, writer = await asyncio.open_unix_connection(socket_path)
            break
        except OSError as err:
            if loop.time() > deadline or not vm.running():
                raise Unavailable("%s: agent socket %s: %s" % (vm.spec.id, socket_path, err)) from err
            await asyncio.sleep(0.01)
    mux = MuxConnection(reader, writer, is_host=True)
    try:
        client = Client(*(await mux.open()))
        await client.call("grpc.SandboxService", "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty,
                          timeout=max(deadline - loop.time(), 1.0))
        yield client
        await client.close()
    finally:
        await mux.close()
    await asyncio.sleep(0.2)


async def _wait_agent(socket_path: str, timeout: float, vm: QemuVM) -> None:
    """Until the template's agent answers Check and has its Task services (a Task call on no container
    loads them: every pod restored from the template then has them without importing them again)."""
    async with agent_session(socket_path, timeout, vm) as client:
        try:
            await client.call("containerd.task.v3.Task", "State", shim_pb2.StateRequest(id="template"),
                              shim_pb2.StateResponse, timeout=timeout)
        except NotFound:
            pass
