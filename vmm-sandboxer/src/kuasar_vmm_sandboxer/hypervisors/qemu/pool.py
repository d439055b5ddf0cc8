"""Warm VMs restored from a template before any pod asks (Kata's VMCache, on this backend's templates).

Under TCG a template start still pays the restore and the agent's first Check (the guest translates its
interpreter's paths again: translations are not migrated), then runc's first run in that guest (~0.3 s of
translating runc's code). A warm VM has done all of that while the machine was otherwise idle: it was
restored, answered Check and ran a throw-away container with the agent's own sealed runc (the same guest
pages the pod's containers will run, so QEMU's translations of them are reused).

``template_pool = N`` keeps N warm VMs per class (a template's digest) that pods have asked for since the
sandboxer started or that its re-attached pods have, and for the default class when ``template_at_start``
made its template. A warm VM lives
in ``<dir>/.vm-pool/<entry>/`` (hidden: the pod table skips it) with its sockets, logs and an empty share.
A pod takes one by renaming those into its own directory, after moving its pod files into the warm share:
QEMU holds the share (its 9p root is an open directory), the logs and the listening sockets by inode, so it
keeps serving them under the pod's paths, and the guest mounts the share only at SetupSandbox. From then on
the VM is the pod's like any restored VM (pid + start time in the pod's record). A warm VM takes no
identity of a pod before it is taken: entropy, clock, hostname and the share are given at SetupSandbox.

A warm VM of a class with NICs runs in a network namespace of its own (``unshare --net``), where QEMU made
its taps; a pod that takes it gets them moved into its own namespace, in place of (and named as) the taps
its network set-up made (:func:`~kuasar_vmm_sandboxer.network.adopt_taps`). That QEMU stays in its empty
namespace, where a cold or restored pod's QEMU runs in the pod's: it holds its taps by fd and opens no socket.

A class whose image or QEMU changed is dropped, with its warm VMs, when a pod first asks for the new one.
Leftovers: each entry records its QEMU (pid + start time) and, once warm, ``"ready": true`` in ``warm.json``
(what an operator or a benchmark can count); a sandboxer that starts kills the warm VMs an
earlier one left (a crash) and removes their entries, and :meth:`WarmPool.close` stops its own.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import uuid
from dataclasses import dataclass, replace
from typing import Any, Optional

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.errors import Internal, KuasarError
from kuasar_shared.process_identity import is_same_process, kill

from kuasar_vmm_sandboxer import network
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.template import (Templates, agent_session, nic_mac, template_key,
                                                           unusable_reason)
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import Nic, VMSpec

__all__ = ["WarmPool", "POOL_DIR", "REFILL_DELAY_S", "WARM_UP", "entries"]

log = logging.getLogger(__name__)

#: below the sandboxer's ``--dir``
POOL_DIR = ".vm-pool"
_RECORD = "warm.json"
#: what a pod takes over: QEMU's sockets and output files (the share is moved apart)
_FILES = ("qmp.sock", "agent.sock", "console.log", "qemu.log")
#: a refill starts this long after the claim that emptied a place, so that it does not take the CPU from
#: the rest of that pod's start (its SetupSandbox and first container, ~1 s under TCG)
REFILL_DELAY_S = 1.5
#: after a failed warm VM, the class is not refilled before its next claim, and at most this often
_RETRY_AFTER_S = 30.0
#: run by the agent's ExecVMProcess (``sh -c``, a child of the agent): one container through runc create,
#: start and delete, with the agent's own sealed runc copy (``/memfd:runc`` among its fds), so that the
#: pod's first container finds runc's code translated. Its bundle is a busybox ``true`` in a temporary
#: directory, removed with its state.
WARM_UP = r"""set -e
fd=$(ls -l /proc/$PPID/fd | sed -n 's|.* \([0-9][0-9]*\) -> /memfd:runc.*|\1|p' | head -n 1)
runc=/proc/$PPID/fd/${fd:?the agent holds no sealed runc copy}
b=$(mktemp -d /run/kuasar-warm.XXXXXX)
trap 'rm -rf "$b"' EXIT
mkdir "$b/rootfs" "$b/rootfs/bin" "$b/state"
cp /bin/busybox "$b/rootfs/bin/true"
cd "$b"
"$runc" spec
sed -i -e 's/"terminal": true/"terminal": false/' -e 's/"sh"$/"true"/' config.json
for n in 1 2; do
    "$runc" --root "$b/state" create --bundle "$b" warm$n </dev/null
    "$runc" --root "$b/state" start warm$n
    "$runc" --root "$b/state" delete --force warm$n
done
echo warm"""


@dataclass
class _Warm:
    """A warm VM waiting in its entry directory."""

    vm: QemuVM
    digest: str
    entry: str


class WarmPool:
    """The warm VMs of one sandboxer, by template class. Resource handling: owns the warm VMs (our children)
    and their entries until a pod takes one; :meth:`close` stops the rest."""

    def __init__(self, config: QemuConfig, templates: Templates) -> None:
        self.config = config
        self.templates = templates
        self.size = config.template_pool
        self.directory = ""
        #: warm VMs ready to be taken, by class digest
        self._ready: dict[str, list[_Warm]] = {}
        #: a spec of each class the pool keeps, by digest
        self._classes: dict[str, VMSpec] = {}
        self._fillers: dict[str, "asyncio.Task[None]"] = {}
        self._failed_at: dict[str, float] = {}
        self._closed = False

    def open(self, directory: str) -> None:
        """Keep warm VMs below ``directory`` (the sandboxer's ``--dir``); stop those an earlier sandboxer left."""
        self.directory = os.path.join(directory, POOL_DIR)
        for entry, record in entries(directory).items():
            pid, start = int(record.get("pid", 0)), record.get("pid_start")
            if pid and is_same_process(pid, start):
                log.info("warm VM pool: stopping QEMU pid %d left by an earlier sandboxer", pid)
                kill(pid, signal.SIGKILL)
            shutil.rmtree(os.path.join(self.directory, entry), ignore_errors=True)

    def ready(self, digest: str) -> int:
        """How many warm VMs of class ``digest`` wait to be taken."""
        return len(self._ready.get(digest, ()))

    def keep(self, spec: VMSpec, delay: float = 0.0) -> None:
        """Keep warm VMs of ``spec``'s class from now on (filled in the background, from ``delay`` s on)."""
        if not self._serves(spec):
            return
        digest, _ = template_key(self.config, spec)
        if digest not in self._classes:
            self._classes[digest] = replace(spec, id="warm", netns="")
            self._refill(digest, delay)

    async def take(self, spec: VMSpec) -> Optional[QemuVM]:
        """A warm VM of ``spec``'s class whose files are now in ``spec.pod_dir`` (for
        :meth:`~.vm.QemuVM.take_over`), or None: the pod restores from its template."""
        if not self._serves(spec):
            return None
        digest, _ = template_key(self.config, spec)
        if digest not in self._classes:
            await self._drop_stale()
            self.keep(spec, REFILL_DELAY_S)
            return None
        queue = self._ready.get(digest, [])
        taken: Optional[QemuVM] = None
        while queue and taken is None:
            warm = queue.pop(0)
            try:
                if spec.nics:
                    await network.adopt_taps("/proc/%d/ns/net" % warm.vm.pid, spec.netns, spec.nics,
                                             [nic.tap for nic in warm.vm.spec.nics])
                taken = self._hand_over(warm, spec)
            except OSError as err:
                log.warning("sandbox %s: warm VM %s cannot be taken: %s", spec.id, warm.vm.spec.id, err)
                await self._discard(warm)
                if spec.nics:
                    await _restore_network(spec)
        self._refill(digest, delay=REFILL_DELAY_S)
        if taken is not None:
            log.info("sandbox %s: took warm VM pid %d (template %s; %d more ready)", spec.id, taken.pid,
                     digest[:12], len(queue))
        return taken

    async def close(self) -> None:
        """Stop filling and stop every warm VM not taken."""
        self._closed = True
        fillers = list(self._fillers.values())
        for task in fillers:
            task.cancel()
        await asyncio.gather(*fillers, return_exceptions=True)
        for queue in self._ready.values():
            while queue:
                await self._discard(queue.pop())

    async def _drop_stale(self) -> None:
        """Stop keeping the classes whose image or QEMU changed since (their digest is not theirs any more):
        no pod can take their warm VMs again."""
        for digest, spec in list(self._classes.items()):
            if template_key(self.config, spec)[0] == digest:
                continue
            log.info("warm VM pool: template %s is stale (its image or QEMU changed); stopping its warm VMs",
                     digest[:12])
            del self._classes[digest]
            filler = self._fillers.pop(digest, None)
            if filler is not None:
                filler.cancel()
                await asyncio.gather(filler, return_exceptions=True)
            for warm in self._ready.pop(digest, []):
                await self._discard(warm)

    def _serves(self, spec: VMSpec) -> bool:
        return (self.size > 0 and bool(self.directory) and not self._closed
                and unusable_reason(self.config, spec) is None)

    def _refill(self, digest: str, delay: float) -> None:
        running = self._fillers.get(digest)
        if running is not None and not running.done():
            return
        loop = asyncio.get_running_loop()
        failed = self._failed_at.get(digest)
        if failed is not None:
            delay = max(delay, failed + _RETRY_AFTER_S - loop.time())
        self._fillers[digest] = loop.create_task(self._fill(digest, delay), name="warm-pool-" + digest[:12])

    async def _fill(self, digest: str, delay: float) -> None:
        await asyncio.sleep(delay)
        queue = self._ready.setdefault(digest, [])
        while len(queue) < self.size and not self._closed:
            try:
                warm = await self._make(digest, self._classes[digest])
            except (KuasarError, OSError) as err:
                self._failed_at[digest] = asyncio.get_running_loop().time()
                log.warning("warm VM pool: a VM of template %s failed (pods restore from the template meanwhile):"
                            " %s", digest[:12], err)
                return
            queue.append(warm)
            log.info("warm VM pool: %s ready (template %s, %d of %d)", warm.vm.spec.id, digest[:12], len(queue),
                     self.size)

    async def _make(self, digest: str, spec: VMSpec) -> _Warm:
        name = uuid.uuid4().hex[:10]
        entry = os.path.join(self.directory, name)
        os.makedirs(os.path.join(entry, "shared"), mode=0o700)
        taps = tuple(Nic(tap="kw%s%d" % (name, i), mac=nic_mac(i)) for i in range(len(spec.nics)))
        vm = QemuVM(replace(spec, id="warm-" + name, pod_dir=entry, nics=taps), self.config,
                    (await self.templates.get(spec)).ram)
        vm.own_netns = bool(taps)
        try:
            await vm.start()
            _record(entry, vm, digest, ready=False)
            timeout = float(self.config.boot_timeout_secs)
            async with agent_session(vm.agent_socket, timeout, vm) as agent:
                done = await agent.call("grpc.SandboxService", "ExecVMProcess",
                                        sandbox_pb2.ExecVMProcessRequest(command=WARM_UP),
                                        sandbox_pb2.ExecVMProcessResponse, timeout=timeout)
            if not done.out.rstrip().endswith("warm"):
                log.warning("warm VM %s: the warm-up container failed (the VM is still used): %s", vm.spec.id,
                            done.out.strip()[-500:])
            _record(entry, vm, digest, ready=True)
        except BaseException:
            await vm.stop(force=True)
            shutil.rmtree(entry, ignore_errors=True)
            raise
        return _Warm(vm=vm, digest=digest, entry=entry)

    def _hand_over(self, warm: _Warm, spec: VMSpec) -> QemuVM:
        """Move the warm VM's files into ``spec.pod_dir``; the caller's VM takes its process over.

        :raise OSError: it is not running, or its files could not be moved (the pod's files are put back).
        """
        if not warm.vm.alive():
            raise OSError("QEMU pid %d is gone" % warm.vm.pid)
        share = os.path.join(spec.pod_dir, "shared")
        warm_share = os.path.join(warm.entry, "shared")
        os.makedirs(share, mode=0o755, exist_ok=True)
        moved: list[str] = []
        try:
            for name in os.listdir(share):  # the pod files Create wrote (hostname, hosts, resolv.conf)
                os.rename(os.path.join(share, name), os.path.join(warm_share, name))
                moved.append(name)
            os.chmod(warm_share, 0o755)
            os.rmdir(share)
        except OSError:
            for name in moved:
                os.rename(os.path.join(warm_share, name), os.path.join(share, name))
            raise
        os.rename(warm_share, share)
        for name in _FILES:
            os.replace(os.path.join(warm.entry, name), os.path.join(spec.pod_dir, name))
        shutil.rmtree(warm.entry, ignore_errors=True)
        return warm.vm

    async def _discard(self, warm: _Warm) -> None:
        await warm.vm.stop(force=True)
        shutil.rmtree(warm.entry, ignore_errors=True)


async def _restore_network(spec: VMSpec) -> None:
    """The pod's taps again, after a warm VM that had begun to take their place was stopped.

    :raise Internal: they cannot be made: the pod's network is broken, and its start fails.
    """
    try:
        await network.restore_taps(spec.netns, spec.nics)
    except OSError as err:
        raise Internal("sandbox %s: cannot restore its taps in %s after a warm VM failed: %s"
                       % (spec.id, spec.netns, err)) from err


def entries(state_dir: str) -> dict[str, dict[str, Any]]:
    """The pool entries below a sandboxer's ``--dir`` ``state_dir`` and their ``warm.json`` (``{}`` for an entry
    that never got as far as running a VM): what a starting sandboxer stops, and what ``"ready"`` VMs wait."""
    pool = os.path.join(state_dir, POOL_DIR)
    try:
        names = os.listdir(pool)
    except FileNotFoundError:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            with open(os.path.join(pool, name, _RECORD)) as handle:
                record = json.load(handle)
        except (OSError, ValueError):  # being made or taken, or a torn write of a killed sandboxer
            record = {}
        found[name] = record if isinstance(record, dict) else {}
    return found


def _record(entry: str, vm: QemuVM, digest: str, ready: bool) -> None:
    """``warm.json``: the QEMU to stop if this sandboxer dies, and whether the VM waits warm (``ready``)."""
    path = os.path.join(entry, _RECORD)
    with open(path + ".tmp", "w") as handle:
        json.dump({"pid": vm.pid, "pid_start": vm.pid_start, "template": digest, "ready": ready}, handle)
    os.replace(path + ".tmp", path)
