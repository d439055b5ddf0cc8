"""GuestTaskBackend: the Task API inside the VM, running containers with the guest's runc.

The host relay forwards the engine's task calls. The bundle is always ``/run/kuasar/state/<cid>``
(the host wrote config.json with guest paths and mounted the rootfs into the share), whatever path
the call carries; rootfs mounts in the call were already done on the host and are ignored. The spec
is adapted to the guest: no network namespace (the pod's NICs are the VM's), IPC/UTS (and PID when
the pod shares it) joined at the pinned pod namespaces, cgroups below ``/kuasar``. Stdio is
streaming only (the relay bridges host FIFOs). vmm-task is PID 1, so every container process is
reaped by it; nothing is persisted because the guest's life ends with the VM's.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal as signals
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Dict, List, Optional, Tuple

from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, KuasarError, NotFound
from kuasar_shared.ids import validate_id
from kuasar_shared.io import ProcessIO, StreamingHub, open_process_io
from kuasar_shared.oci import (OciRuntime, StdioFds, clamp_oom_score_adj, drop_hostname_if_shared_uts, load_spec,
                               save_spec)
from kuasar_shared.task.backend import (CgroupStats, CreateTask, ExecProcess, ExitInfo, ProcessState, Stdio,
                                        TaskBackend, TaskStatus)

from kuasar_vmm_task.boot import SHARE_DIR
from kuasar_vmm_task.events import EventQueue
from kuasar_vmm_task.pod import PodNamespaces

__all__ = ["GuestTaskBackend", "adapt_spec"]

log = logging.getLogger(__name__)

_POD_NS = ("ipc", "uts", "pid")


def adapt_spec(spec: Dict[str, Any], container_id: str, pod_ns: PodNamespaces) -> Dict[str, Any]:
    """Make a host-written spec run in this guest (see the module docstring); returns ``spec``."""
    linux = spec.setdefault("linux", {})
    adapted = []
    for entry in linux.get("namespaces") or []:
        ns_type = entry.get("type")
        if ns_type == "network":
            continue
        if ns_type in _POD_NS:
            pinned = pod_ns.path(ns_type)
            if pinned:
                entry = {"type": ns_type, "path": pinned}
            elif entry.get("path"):
                entry = {"type": ns_type}  # a host /proc path means nothing here: a new namespace
        adapted.append(entry)
    linux["namespaces"] = adapted
    if not linux.get("cgroupsPath"):
        linux["cgroupsPath"] = f"/kuasar/{container_id}"
    drop_hostname_if_shared_uts(spec)
    clamp_oom_score_adj(spec.setdefault("process", {}))
    return spec


@dataclass
class _Proc:
    exec_id: str
    stdio: Stdio
    spec: Optional[Dict[str, Any]] = None
    pid: int = 0
    status: TaskStatus = TaskStatus.CREATED
    exit_status: int = 0
    exited_at: Optional[datetime] = None
    done: "asyncio.Future[None]" = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def exited(self, event: ExitEvent) -> None:
        self.status, self.exit_status, self.exited_at = TaskStatus.STOPPED, event.status, event.exited_at
        if not self.done.done():
            self.done.set_result(None)

    def exit_info(self) -> ExitInfo:
        return ExitInfo(pid=self.pid, exit_status=self.exit_status, exited_at=self.exited_at)


@dataclass
class _Container:
    id: str
    bundle: str
    cgroups_path: str
    init: _Proc
    execs: Dict[str, _Proc] = field(default_factory=dict)

    def proc(self, exec_id: str) -> _Proc:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"process {exec_id} of container {self.id} not found") from None


class GuestTaskBackend(TaskBackend):
    """Every container of the pod this VM runs."""

    #: seconds Delete waits for a killed init to be reaped
    kill_timeout = 10.0

    def __init__(self, hub: StreamingHub, pod_ns: PodNamespaces, events: EventQueue,
                 share: str = SHARE_DIR, runc: str = "runc", runc_root: str = "/run/runc") -> None:
        self.hub = hub
        self.pod_ns = pod_ns
        self.events = events
        self.share = share
        self.runtime = OciRuntime(runc, runc_root)
        self._containers: Dict[str, _Container] = {}
        self._locks: Dict[str, asyncio.Lock] = {}
        self._io: Dict[Tuple[str, str], ProcessIO] = {}
        self._watches: set = set()
        self.work = os.path.join(runc_root, "kuasar-work")

    def __repr__(self) -> str:
        return f"<GuestTaskBackend containers={len(self._containers)}>"

    def _get(self, container_id: str) -> _Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def _watch(self, container: _Container, proc: _Proc) -> None:
        fut = get_reaper().subscribe(proc.pid)
        self._watches.add(fut)

        def done(f: "asyncio.Future[ExitEvent]") -> None:
            self._watches.discard(f)
            if not f.cancelled():
                proc.exited(f.result())
                log.info("container %s process %r pid %d exited with %d", container.id, proc.exec_id, proc.pid,
                         proc.exit_status)
        fut.add_done_callback(done)

    async def create(self, req: CreateTask) -> int:
        validate_id(req.id, "container")
        async with self._lock(req.id):
            if req.id in self._containers:
                raise AlreadyExists(f"container {req.id} already exists")
            bundle = os.path.join(self.share, req.id)
            spec = adapt_spec(load_spec(bundle), req.id, self.pod_ns)
            save_spec(bundle, spec)
            if req.rootfs:
                log.debug("container %s: rootfs mounts were made by the host; ignored", req.id)
            container = _Container(req.id, bundle, spec["linux"]["cgroupsPath"], _Proc("", req.stdio))
            os.makedirs(self.work, exist_ok=True)
            pio = await open_process_io(req.stdio, self.hub, name=req.id)
            try:
                pid = await self.runtime.create(req.id, bundle, os.path.join(self.work, req.id + ".pid"),
                                                StdioFds(pio.stdin, pio.stdout, pio.stderr))
            except BaseException:
                await pio.close()
                raise
            finally:
                pio.child_started()
            container.init.pid = pid
            self._io[(req.id, "")] = pio
            self._containers[req.id] = container
            self._watch(container, container.init)
            self.events.watch_oom(req.id, container.cgroups_path)
            log.info("container %s created, pid %d", req.id, pid)
            return pid

    async def start(self, id: str, exec_id: str) -> int:
        async with self._lock(id):
            container = self._get(id)
            proc = container.proc(exec_id)
            if proc.status is not TaskStatus.CREATED or (exec_id and proc.pid):
                raise FailedPrecondition(f"container {id} process {exec_id!r} cannot start: it is "
                                         f"{proc.status.name.lower()}")
            if exec_id:
                await self._start_exec(container, proc)
            else:
                await self.runtime.start(id)
            if proc.status is TaskStatus.CREATED:
                proc.status = TaskStatus.RUNNING
            return proc.pid

    async def _start_exec(self, container: _Container, proc: _Proc) -> None:
        if container.init.status is not TaskStatus.RUNNING:
            raise FailedPrecondition(f"container {container.id} is not running; cannot exec {proc.exec_id}")
        base = os.path.join(self.work, f"{container.id}.{proc.exec_id}")
        with open(base + ".json", "w") as handle:
            json.dump(proc.spec or {}, handle)
        pio = await open_process_io(proc.stdio, self.hub, name=f"{container.id}-{proc.exec_id}")
        try:
            proc.pid = await self.runtime.exec(container.id, base + ".json", base + ".pid", base + ".log",
                                               StdioFds(pio.stdin, pio.stdout, pio.stderr))
        except BaseException:
            await pio.close()
            raise
        finally:
            pio.child_started()
            os.unlink(base + ".json")
        self._io[(container.id, proc.exec_id)] = pio
        self._watch(container, proc)

    async def exec(self, req: ExecProcess) -> None:
        validate_id(req.exec_id, "exec")
        async with self._lock(req.id):
            container = self._get(req.id)
            if req.exec_id in container.execs:
                raise AlreadyExists(f"process {req.exec_id} already exists in container {req.id}")
            if container.init.status is not TaskStatus.RUNNING:
                raise FailedPrecondition(f"container {req.id} is not running")
            spec = dict(req.spec)
            clamp_oom_score_adj(spec)
            container.execs[req.exec_id] = _Proc(req.exec_id, req.stdio, spec)

    async def state(self, id: str, exec_id: str) -> ProcessState:
        container = self._get(id)
        proc = container.proc(exec_id)
        return ProcessState(id=id, exec_id=exec_id, bundle=container.bundle, pid=proc.pid, status=proc.status,
                            stdio=proc.stdio, exit_status=proc.exit_status, exited_at=proc.exited_at)

    async def kill(self, id: str, exec_id: str, signal: int, all: bool) -> None:
        container = self._get(id)
        proc = container.proc(exec_id)
        if proc.status is TaskStatus.STOPPED or not proc.pid:
            raise NotFound(f"container {id} process {exec_id!r} is not running")
        if exec_id:
            os.kill(proc.pid, signal)
            return
        try:
            await self.runtime.kill(id, signal, all=all)
        except FailedPrecondition as err:
            raise NotFound(str(err)) from err

    async def wait(self, id: str, exec_id: str) -> ExitInfo:
        proc = self._get(id).proc(exec_id)
        await asyncio.shield(proc.done)
        return proc.exit_info()

    async def delete(self, id: str, exec_id: str) -> ExitInfo:
        async with self._lock(id):
            container = self._get(id)
            proc = container.proc(exec_id)
            if proc.status in (TaskStatus.RUNNING, TaskStatus.PAUSED):
                raise FailedPrecondition(f"container {id} process {exec_id!r} is still running")
            if exec_id:
                await self._close_io(id, exec_id)
                del container.execs[exec_id]
                return proc.exit_info()
            await self._remove(container)
            return proc.exit_info()

    async def _remove(self, container: _Container) -> None:
        try:
            await self.runtime.delete(container.id, force=True)
        except NotFound:
            pass
        if container.init.status is not TaskStatus.STOPPED and container.init.pid:
            try:
                await asyncio.wait_for(asyncio.shield(container.init.done), self.kill_timeout)
            except asyncio.TimeoutError:
                log.warning("container %s: init %d not reaped within %s s", container.id, container.init.pid,
                            self.kill_timeout)
        for exec_id in ["", *container.execs]:
            await self._close_io(container.id, exec_id)
        self.events.unwatch(container.id)
        self._containers.pop(container.id, None)
        self._locks.pop(container.id, None)
        log.info("container %s deleted", container.id)

    async def _close_io(self, container_id: str, exec_id: str) -> None:
        pio = self._io.pop((container_id, exec_id), None)
        if pio is not None:
            await pio.wait()
            await pio.close()

    async def pids(self, id: str) -> List[int]:
        self._get(id)
        return await self.runtime.ps(id)

    async def stats(self, id: str) -> CgroupStats:
        self._get(id)
        data = await self.runtime.stats(id)
        cpu = data.get("cpu", {}).get("usage", {})
        memory = data.get("memory", {})
        usage, raw = memory.get("usage", {}), memory.get("raw", {})
        pids = data.get("pids", {})
        return CgroupStats(cpu_total_ns=int(cpu.get("total", 0)), cpu_user_ns=int(cpu.get("user", 0)),
                           cpu_kernel_ns=int(cpu.get("kernel", 0)), memory_usage=int(usage.get("usage", 0)),
                           memory_limit=int(usage.get("limit", 0)), memory_max_usage=int(usage.get("max", 0)),
                           memory_failcnt=int(usage.get("failcnt", 0)), memory_rss=int(raw.get("rss", 0)),
                           memory_cache=int(raw.get("cache", 0)),
                           memory_total_inactive_file=int(raw.get("total_inactive_file", 0)),
                           pids_current=int(pids.get("current", 0)), pids_limit=int(pids.get("limit", 0)))

    async def pause(self, id: str) -> None:
        async with self._lock(id):
            container = self._get(id)
            await self.runtime.pause(id)
            container.init.status = TaskStatus.PAUSED

    async def resume(self, id: str) -> None:
        async with self._lock(id):
            container = self._get(id)
            await self.runtime.resume(id)
            container.init.status = TaskStatus.RUNNING

    async def update(self, id: str, resources: Dict[str, Any], annotations: Dict[str, str]) -> None:
        self._get(id)
        await self.runtime.update(id, resources)

    async def close_io(self, id: str, exec_id: str, stdin: bool) -> None:
        self._get(id).proc(exec_id)
        pio = self._io.get((id, exec_id))
        if stdin and pio is not None:
            pio.close_stdin()

    async def shutdown(self, id: str, now: bool) -> None:
        """Kill every container (this VM runs one pod); ``now``: delete them too."""
        for container in list(self._containers.values()):
            if container.init.status is not TaskStatus.STOPPED and container.init.pid:
                try:
                    await self.runtime.kill(container.id, signals.SIGKILL, all=True)
                except KuasarError as err:
                    log.warning("container %s: kill at shutdown failed: %s", container.id, err)
            if now:
                async with self._lock(container.id):
                    if container.id in self._containers:
                        await self._remove(container)

    async def close(self) -> None:
        for fut in list(self._watches):
            fut.cancel()
        self._watches.clear()
        for pio in self._io.values():
            await pio.close()
        self._io.clear()
