"""RuncTaskBackend: the Task API for every runc pod, driving the real ``runc`` binary.

runc-task is a child subreaper, so container inits and ``exec --detach`` processes re-parent to it
when runc exits; their exit statuses come from :mod:`kuasar_shared.daemon.reaper`, subscribed by
the pid runc wrote to ``--pid-file`` (the reaper keeps exits that happen before the subscription).
Each container is saved in ``<dir>/<id>.json`` after every change. After ``kill -9`` and a
restart, :meth:`RuncTaskBackend.recover` re-adopts processes whose pid and start time still match
and watches them with pidfds. Their exit status is no longer ours to reap: it is claimed from the
:class:`~kuasar_shared.oci.ExitRecorder` of the subreaper they re-parented to (runc-sandboxer),
else reported as 128 + the last signal this server sent, or 255 (containerd's "unknown").
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal as signals
from datetime import datetime, timezone
from typing import Any, Optional

from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, KuasarError, NotFound, Unimplemented
from kuasar_shared.ids import validate_id
from kuasar_shared.io import ProcessIO, StreamingHub, open_process_io
from kuasar_shared.mounts import mount_all, unmount_recursive
from kuasar_shared.oci import (ExitRecorder, ExitWatch, OciRuntime, StdioFds, clamp_oom_score_adj, drop_hostname_if_shared_uts,
                               is_same_process, load_spec, rootfs_path, save_spec, set_cgroups_path,
                               start_time)
from kuasar_shared.store import CorruptState
from kuasar_shared.task.backend import (CgroupStats, CreateTask, ExecProcess, ExitInfo, ProcessState,
                                        TaskBackend, TaskStatus)

from kuasar_runc_task.container import Container, ContainerStore, Proc
from kuasar_runc_task.podns import default_cgroups_path, join_pod_namespaces, sandbox_id_of

__all__ = ["RuncTaskBackend"]

log = logging.getLogger(__name__)

#: exit status of an adopted process whose end this server did not cause (containerd's "unknown")
UNKNOWN_EXIT = 255


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _fds(pio: ProcessIO) -> StdioFds:
    return StdioFds(stdin=pio.stdin, stdout=pio.stdout, stderr=pio.stderr)


def _unmount(container: Container) -> None:
    """Undo the rootfs mounts this server made (failures are logged: the record goes anyway)."""
    if container.mounted:
        try:
            unmount_recursive(container.rootfs)
        except KuasarError as err:
            log.warning("container %s: cannot unmount %s: %s", container.id, container.rootfs, err)


class RuncTaskBackend(TaskBackend):
    """Containers of every runc pod.

    Args:
        directory: where container records (``<id>.json``) and work files live.
        pods_dir: the sandboxer's ``--dir``, holding ``<pod id>/ns/<type>`` pinned namespaces.
        binary: default OCI runtime binary; ``runtime_root``: default ``--root`` (per namespace).
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of processes orphaned by a dead task server.
    """

    #: seconds Delete/Shutdown wait for a killed process to be reaped
    kill_timeout = 10.0

    def __init__(self, directory: str, pods_dir: str = "", binary: str = "runc",
                 runtime_root: str = "", hub: Optional[StreamingHub] = None,
                 exits: Optional[ExitRecorder] = None) -> None:
        self.store = ContainerStore(directory)
        self.pods_dir = pods_dir
        self.binary = binary
        self.runtime_root = runtime_root or os.path.join(directory, ".runc")
        self._containers: dict[str, Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watches: set[Any] = set()
        self.hub = hub
        self.exits = exits
        self._tasks: set[asyncio.Task[None]] = set()
        #: stdio copiers per (container id, exec id); FIFO output needs none and survives restarts
        self._io: dict[tuple[str, str], ProcessIO] = {}

    def _get(self, container_id: str) -> Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    @staticmethod
    def _runtime(container: Container) -> OciRuntime:
        return OciRuntime(container.binary, container.root)

    def _watch_child(self, container: Container, proc: Proc) -> None:
        """Resolve ``proc``'s exit from the reaper (the process is our descendant)."""
        fut = get_reaper().subscribe(proc.pid)
        self._watches.add(fut)

        def done(f: "asyncio.Future[ExitEvent]") -> None:
            self._watches.discard(f)
            if not f.cancelled():
                self._exited(container, proc, f.result().status, f.result().exited_at)
        fut.add_done_callback(done)

    def _watch_adopted(self, container: Container, proc: Proc) -> None:
        """Resolve ``proc``'s exit through a pidfd (re-adopted, not our child)."""
        def done() -> None:
            self._watches.discard(watch)
            task = asyncio.ensure_future(self._adopted_exit(container, proc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        watch = ExitWatch(proc.pid, done)
        self._watches.add(watch)

    async def _adopted_exit(self, container: Container, proc: Proc) -> None:
        claimed = await self.exits.claim(proc.pid) if self.exits is not None else None
        if claimed is None:
            self._exited(container, proc, 128 + proc.signal if proc.signal else UNKNOWN_EXIT, _now())
        else:
            self._exited(container, proc, *claimed)

    def _exited(self, container: Container, proc: Proc, status: int, at: datetime) -> None:
        proc.exited(status, at)
        log.info("container %s process %r pid %d exited with %d", container.id, proc.exec_id,
                 proc.pid, status)
        if container.id in self._containers:
            self.store.save(container)

    async def create(self, req: CreateTask) -> int:
        validate_id(req.id, "container")
        if req.stdio.terminal:
            raise Unimplemented(f"container {req.id}: terminals are not supported by runc-task")
        async with self._lock(req.id):
            if req.id in self._containers:
                raise AlreadyExists(f"container {req.id} already exists")
            namespace = validate_id(req.namespace, "namespace") if req.namespace else "default"
            root = os.path.join(str(req.options.get("root") or self.runtime_root), namespace)
            spec = load_spec(req.bundle)
            sandbox_id = sandbox_id_of(spec, req.bundle)
            join_pod_namespaces(spec, self.pods_dir, sandbox_id)
            cgroups_path = default_cgroups_path(spec, self.pods_dir, sandbox_id, req.id)
            if cgroups_path:
                set_cgroups_path(spec, cgroups_path)
            drop_hostname_if_shared_uts(spec)
            clamp_oom_score_adj(spec.setdefault("process", {}))
            save_spec(req.bundle, spec)
            container = Container(id=req.id, bundle=req.bundle, namespace=namespace, sandbox_id=sandbox_id,
                                  binary=str(req.options.get("binary_name") or self.binary), root=root,
                                  rootfs=rootfs_path(req.bundle, spec))
            container.init.stdio = {"stdin": req.stdio.stdin, "stdout": req.stdio.stdout,
                                    "stderr": req.stdio.stderr}
            if req.rootfs:
                os.makedirs(container.rootfs, exist_ok=True)
                container.mounted = len(mount_all(req.rootfs, container.rootfs))
            try:
                pio = await open_process_io(req.stdio, self.hub, name=req.id)
                try:
                    pid_file = os.path.join(self.store.work_dir(req.id), "init.pid")
                    pid = await self._runtime(container).create(req.id, req.bundle, pid_file, _fds(pio))
                except BaseException:
                    await pio.close()
                    raise
                finally:
                    pio.child_started()
            except BaseException:
                _unmount(container)
                self.store.remove(req.id)
                raise
            container.init.pid, container.init.start_time = pid, start_time(pid)
            self._io[(req.id, "")] = pio
            self._containers[req.id] = container
            self._watch_child(container, container.init)
            self.store.save(container)
            log.info("container %s created in sandbox %s, pid %d", req.id, sandbox_id or "-", pid)
            return pid

    async def start(self, id: str, exec_id: str) -> int:
        async with self._lock(id):
            container = self._get(id)
            proc = container.proc(exec_id)
            if proc.status is not TaskStatus.CREATED or (exec_id and proc.pid):
                raise FailedPrecondition(f"container {id} process {exec_id!r} cannot start: it is "
                                         f"{proc.status.name.lower()}")
            if not exec_id:
                await self._runtime(container).start(id)
            else:
                await self._start_exec(container, proc)
            if proc.status is TaskStatus.CREATED:
                proc.status = TaskStatus.RUNNING
            self.store.save(container)
            return proc.pid

    async def _start_exec(self, container: Container, proc: Proc) -> None:
        if container.init.status is not TaskStatus.RUNNING:
            raise FailedPrecondition(f"container {container.id} is not running; cannot exec {proc.exec_id}")
        work = self.store.work_dir(container.id)
        spec_path = os.path.join(work, proc.exec_id + ".process.json")
        with open(spec_path, "w") as handle:
            json.dump(proc.spec or {}, handle)
        pid_file = os.path.join(work, proc.exec_id + ".pid")
        pio = await open_process_io(proc.stdio_value(), self.hub, name=f"{container.id}-{proc.exec_id}")
        try:
            pid = await self._runtime(container).exec(
                container.id, spec_path, pid_file, os.path.join(work, "exec-log.json"), _fds(pio))
        except BaseException:
            await pio.close()
            raise
        finally:
            pio.child_started()
            os.unlink(spec_path)
        self._io[(container.id, proc.exec_id)] = pio
        proc.pid, proc.start_time = pid, start_time(pid)
        self._watch_child(container, proc)

    async def exec(self, req: ExecProcess) -> None:
        validate_id(req.exec_id, "exec")
        if req.stdio.terminal:
            raise Unimplemented(f"container {req.id}: terminals are not supported by runc-task")
        async with self._lock(req.id):
            container = self._get(req.id)
            if req.exec_id in container.execs:
                raise AlreadyExists(f"process {req.exec_id} already exists in container {req.id}")
            if container.init.status is not TaskStatus.RUNNING:
                raise FailedPrecondition(f"container {req.id} is not running")
            spec = dict(req.spec)
            clamp_oom_score_adj(spec)
            container.execs[req.exec_id] = Proc(exec_id=req.exec_id, spec=spec, stdio={
                "stdin": req.stdio.stdin, "stdout": req.stdio.stdout, "stderr": req.stdio.stderr})
            self.store.save(container)

    async def state(self, id: str, exec_id: str) -> ProcessState:
        return self._get(id).state(exec_id)

    async def kill(self, id: str, exec_id: str, signal: int, all: bool) -> None:
        container = self._get(id)
        proc = container.proc(exec_id)
        if proc.status is TaskStatus.STOPPED or (exec_id and not proc.pid):
            raise NotFound(f"container {id} process {exec_id!r} is not running")
        proc.signal = signal
        if exec_id:
            if not is_same_process(proc.pid, proc.start_time):
                raise NotFound(f"container {id} process {exec_id!r} is not running")
            os.kill(proc.pid, signal)
            return
        try:
            await self._runtime(container).kill(id, signal, all=all)
        except FailedPrecondition as err:
            raise NotFound(str(err)) from err

    async def wait(self, id: str, exec_id: str) -> ExitInfo:
        proc = self._get(id).proc(exec_id)
        await asyncio.shield(proc.future())
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
                self.store.save(container)
                return proc.exit_info()
            await self._remove(container)
            return proc.exit_info()

    async def _remove(self, container: Container) -> None:
        """Delete the runtime's container (killing a created init), unmount and forget it."""
        try:
            await self._runtime(container).delete(container.id, force=True)
        except NotFound:
            pass
        if container.init.status is not TaskStatus.STOPPED:
            await self._await_exit(container.init)
        for exec_id in ["", *container.execs]:
            await self._close_io(container.id, exec_id)
        _unmount(container)
        self._containers.pop(container.id, None)
        self._locks.pop(container.id, None)
        self.store.remove(container.id)
        log.info("container %s deleted", container.id)

    async def _close_io(self, container_id: str, exec_id: str) -> None:
        """Let a finished process's output drain to the engine, then release its copiers."""
        pio = self._io.pop((container_id, exec_id), None)
        if pio is not None:
            await pio.wait()
            await pio.close()

    async def _await_exit(self, proc: Proc) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.future()), self.kill_timeout)
        except asyncio.TimeoutError:
            log.warning("process pid %d did not exit within %s s", proc.pid, self.kill_timeout)

    async def pids(self, id: str) -> list[int]:
        container = self._get(id)
        return await self._runtime(container).ps(id)

    async def stats(self, id: str) -> CgroupStats:
        container = self._get(id)
        data = await self._runtime(container).stats(id)
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
            await self._runtime(container).pause(id)
            container.init.status = TaskStatus.PAUSED
            self.store.save(container)

    async def resume(self, id: str) -> None:
        async with self._lock(id):
            container = self._get(id)
            await self._runtime(container).resume(id)
            container.init.status = TaskStatus.RUNNING
            self.store.save(container)

    async def update(self, id: str, resources: dict[str, Any], annotations: dict[str, str]) -> None:
        container = self._get(id)
        await self._runtime(container).update(id, resources)

    async def close_io(self, id: str, exec_id: str, stdin: bool) -> None:
        self._get(id).proc(exec_id)
        pio = self._io.get((id, exec_id))
        if stdin and pio is not None:
            pio.close_stdin()

    async def shutdown(self, id: str, now: bool) -> None:
        """Kill every container of sandbox ``id`` (or the container ``id``); ``now``: also delete them."""
        targets = [c for c in list(self._containers.values()) if id in (c.sandbox_id, c.id)]
        for container in targets:
            if container.init.status is not TaskStatus.STOPPED:
                container.init.signal = signals.SIGKILL
                try:
                    await self._runtime(container).kill(container.id, signals.SIGKILL, all=True)
                except KuasarError as err:
                    log.warning("container %s: kill at shutdown failed: %s", container.id, err)
        for container in targets:
            if container.init.pid and container.init.status is not TaskStatus.CREATED:
                await self._await_exit(container.init)
            if now:
                async with self._lock(container.id):
                    if container.id in self._containers:
                        await self._remove(container)

    async def recover(self) -> None:
        """Re-adopt the containers recorded in the state directory (call once before serving)."""
        for path in self.store.paths():
            try:
                container = self.store.load(path)
                validate_id(container.id, "container")
            except (CorruptState, KeyError, TypeError, ValueError, KuasarError) as err:
                log.error("dropping unreadable container record %s: %s", path, err)
                os.unlink(path)
                continue
            self._containers[container.id] = container
            for proc in [container.init, *container.execs.values()]:
                if proc.status is TaskStatus.STOPPED or not proc.pid:
                    continue
                if is_same_process(proc.pid, proc.start_time):
                    if self.exits is not None:
                        self.exits.discard(proc.pid)
                    self._watch_adopted(container, proc)
                else:
                    proc.exited(128 + proc.signal if proc.signal else UNKNOWN_EXIT, _now())
            self.store.save(container)
            log.info("container %s re-adopted (init %s)", container.id, container.init.status.name.lower())

    async def close(self) -> None:
        """Stop watching and copying (containers keep running; FIFO output keeps flowing)."""
        for watch in list(self._watches):
            watch.cancel()
        self._watches.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pio in self._io.values():
            await pio.close()
        self._io.clear()
