"""OciTaskBackend: the Task API over an OCI runtime command line, for every pod of one sandbox type.

One implementation drives any OCI runtime CLI (runc, runsc, youki...): containers, exec
processes, exit statuses, persistence in ``<dir>/<id>.json`` after every change, and re-adoption
after a restart. What differs between runtimes is small and lives in :class:`OciHooks`: how a spec
is adapted to the pod (runc joins the pod's pinned namespaces; runsc joins the pod's sandbox
through the CRI annotations), which binary, ``--root`` and global options are used, and how exits
are observed.

Exits. The task server is a child subreaper, so processes re-parent to it when the runtime CLI
exits and their statuses come from :mod:`kuasar_shared.daemon.reaper`, subscribed by the pid the
runtime wrote to ``--pid-file``. That pid is the container's init for runc; for runsc it is the
sandbox process shared by the whole pod, so init exits come from ``<runtime> wait`` instead
(:attr:`OciHooks.init_pid_is_own`). runsc exec pids are waiters that exit with the process's
status but do not forward signals, so execs are signalled with ``<runtime> kill --pid``
(:attr:`OciHooks.internal_exec_pids`). After ``kill -9`` and a restart, :meth:`OciTaskBackend.recover`
re-adopts processes whose pid and start time still match and watches them with pidfds (or a new
``wait``). Their exit status is no longer ours to reap: it is claimed from the
:class:`~kuasar_shared.oci.ExitRecorder` of the subreaper they re-parented to (the sandboxer),
else reported as 128 + the last signal this server sent, or 255 (containerd's "unknown").
"""
from __future__ import annotations

import abc
import asyncio
import json
import logging
import os
import signal as signals
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, KuasarError, NotFound, Unimplemented
from kuasar_shared.ids import validate_id
from kuasar_shared.io import ProcessIO, StreamingHub, open_process_io
from kuasar_shared.mounts import mount_all, unmount_recursive
from kuasar_shared.oci.container import Container, ContainerStore, Proc
from kuasar_shared.oci.exits import ExitRecorder
from kuasar_shared.oci.pids import ExitWatch, is_same_process, start_time
from kuasar_shared.oci.runtime import OciRuntime, StdioFds, read_pid_file
from kuasar_shared.oci.spec import clamp_oom_score_adj, load_spec, rootfs_path, save_spec
from kuasar_shared.store import CorruptState
from kuasar_shared.task.backend import (CgroupStats, CreateTask, ExecProcess, ExitInfo, ProcessState, Stdio,
                                        TaskBackend, TaskStatus)

__all__ = ["OciTaskBackend", "OciHooks", "Placement", "UNKNOWN_EXIT"]

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


@dataclass(frozen=True)
class Placement:
    """Where a new container belongs and how its runtime is invoked.

    ``sandbox_id``: the pod (``""`` for none); ``binary``/``root``/``global_args``: the runtime
    command line for every later call on this container (persisted in its record).
    """

    sandbox_id: str
    binary: str
    root: str
    global_args: tuple[str, ...] = ()


class OciHooks(abc.ABC):
    """What one OCI runtime needs beyond the shared driving code of :class:`OciTaskBackend`.

    The defaults fit runc: the ``--pid-file`` pid is the container's init and exec pids are the
    exec'd processes themselves.
    """

    #: name used in messages (``runc-task``)
    name = "task server"
    #: True when the ``--pid-file`` pid of ``create`` is the container's own init; False when it is
    #: a process shared by the pod (runsc's sandbox) and init exits come from ``<runtime> wait``
    init_pid_is_own = True
    #: True when the runtime hands the init the stdio of ``start`` rather than of ``create``
    #: (runsc sub-containers)
    stdio_at_start = False
    #: True when exec processes are signalled through ``<runtime> kill --pid <internal pid>``
    #: (runsc: the host pid of an exec is a waiter that does not forward signals)
    internal_exec_pids = False

    @abc.abstractmethod
    def place(self, req: CreateTask, spec: dict[str, Any], namespace: str) -> Placement:
        """Adapt ``spec`` (in place; the caller saves it) to the container's pod and return how
        the runtime is invoked. ``namespace`` is the engine namespace, already validated.

        :raise KuasarError: when the container cannot run (e.g. its pod is unknown).
        """


class OciTaskBackend(TaskBackend):
    """Containers of every pod of one sandbox type, run by an OCI runtime CLI.

    Args:
        directory: where container records (``<id>.json``) and work files live.
        hooks: the runtime-specific parts.
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of processes orphaned by a dead task server.

    Resource handling: :meth:`close` stops watching and copying; containers keep running.
    """

    #: seconds Delete/Shutdown wait for a killed process to be reaped
    kill_timeout = 10.0
    #: tries of ``<runtime> delete --force`` before Delete fails
    delete_attempts = 5

    def __init__(self, directory: str, hooks: OciHooks, hub: Optional[StreamingHub] = None,
                 exits: Optional[ExitRecorder] = None) -> None:
        self.store: ContainerStore[Container] = ContainerStore(directory, Container)
        self.hooks = hooks
        self._containers: dict[str, Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watches: set[Any] = set()
        self.hub = hub
        self.exits = exits
        self._tasks: set[asyncio.Task[None]] = set()
        #: stdio copiers per (container id, exec id); FIFO output needs none and survives restarts
        self._io: dict[tuple[str, str], ProcessIO] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dir={self.store.directory!r}, containers={len(self._containers)})"

    def _get(self, container_id: str) -> Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    @staticmethod
    def _runtime(container: Container) -> OciRuntime:
        return OciRuntime(container.binary, container.root, container.global_args)

    def _own(self, coro: Any) -> None:
        """Run ``coro`` as a task this backend owns (cancelled and awaited by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _runtime_wait(self, container: Container) -> None:
        """Resolve the init's exit from ``<runtime> wait`` (unknown when the runtime cannot tell)."""
        proc = container.init
        try:
            status = await self._runtime(container).wait(container.id)
        except KuasarError as err:
            log.warning("container %s: the runtime cannot report the init's exit: %s", container.id, err)
            status = 128 + proc.signal if proc.signal else UNKNOWN_EXIT
        if proc.status is not TaskStatus.STOPPED:
            self._exited(container, proc, status, _now())

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
            self._own(self._adopted_exit(container, proc))
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
            raise Unimplemented(f"container {req.id}: terminals are not supported by {self.hooks.name}")
        async with self._lock(req.id):
            if req.id in self._containers:
                raise AlreadyExists(f"container {req.id} already exists")
            namespace = validate_id(req.namespace, "namespace") if req.namespace else "default"
            spec = load_spec(req.bundle)
            placement = self.hooks.place(req, spec, namespace)
            clamp_oom_score_adj(spec.setdefault("process", {}))
            save_spec(req.bundle, spec)
            sandbox_id = placement.sandbox_id
            container = Container(id=req.id, bundle=req.bundle, namespace=namespace, sandbox_id=sandbox_id,
                                  binary=placement.binary, root=placement.root,
                                  global_args=placement.global_args, rootfs=rootfs_path(req.bundle, spec))
            container.init.stdio = {"stdin": req.stdio.stdin, "stdout": req.stdio.stdout,
                                    "stderr": req.stdio.stderr}
            if req.rootfs:
                os.makedirs(container.rootfs, exist_ok=True)
                container.mounted = len(mount_all(req.rootfs, container.rootfs))
            try:
                pio = await open_process_io(Stdio() if self.hooks.stdio_at_start else req.stdio, self.hub,
                                            name=req.id)
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
            if not self.hooks.stdio_at_start:
                self._io[(req.id, "")] = pio
            self._containers[req.id] = container
            if self.hooks.init_pid_is_own:
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
                await self._start_init(container)
                if not self.hooks.init_pid_is_own:
                    self._own(self._runtime_wait(container))
            else:
                await self._start_exec(container, proc)
            if proc.status is TaskStatus.CREATED:
                proc.status = TaskStatus.RUNNING
            self.store.save(container)
            return proc.pid

    async def _start_init(self, container: Container) -> None:
        if not self.hooks.stdio_at_start:
            await self._runtime(container).start(container.id)
            return
        pio = await open_process_io(container.init.stdio_value(), self.hub, name=container.id)
        try:
            await self._runtime(container).start(container.id, _fds(pio),
                                                 os.path.join(container.bundle, "log.json"))
        except BaseException:
            await pio.close()
            raise
        finally:
            pio.child_started()
        self._io[(container.id, "")] = pio

    async def _start_exec(self, container: Container, proc: Proc) -> None:
        if container.init.status is not TaskStatus.RUNNING:
            raise FailedPrecondition(f"container {container.id} is not running; cannot exec {proc.exec_id}")
        work = self.store.work_dir(container.id)
        spec_path = os.path.join(work, proc.exec_id + ".process.json")
        with open(spec_path, "w") as handle:
            json.dump(proc.spec or {}, handle)
        pid_file = os.path.join(work, proc.exec_id + ".pid")
        internal = os.path.join(work, proc.exec_id + ".ipid") if self.hooks.internal_exec_pids else None
        pio = await open_process_io(proc.stdio_value(), self.hub, name=f"{container.id}-{proc.exec_id}")
        try:
            pid = await self._runtime(container).exec(
                container.id, spec_path, pid_file, os.path.join(work, "exec-log.json"), _fds(pio),
                internal_pid_file=internal)
            if internal is not None:
                proc.runtime_pid = read_pid_file(internal)
        except BaseException:
            await pio.close()
            raise
        finally:
            pio.child_started()
            for path in (spec_path, pid_file, internal):
                if path is not None and os.path.exists(path):
                    os.unlink(path)
        self._io[(container.id, proc.exec_id)] = pio
        proc.pid, proc.start_time = pid, start_time(pid)
        self._watch_child(container, proc)

    async def exec(self, req: ExecProcess) -> None:
        validate_id(req.exec_id, "exec")
        if req.stdio.terminal:
            raise Unimplemented(f"container {req.id}: terminals are not supported by {self.hooks.name}")
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
            if proc.runtime_pid:
                await self._runtime(container).kill(id, signal, pid=proc.runtime_pid)
            else:
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
        await self._runtime_delete(container)
        init = container.init
        if init.status is TaskStatus.CREATED and not self.hooks.init_pid_is_own:
            self._exited(container, init, 128 + signals.SIGKILL, _now())  # never started: no waiter
        elif init.status is not TaskStatus.STOPPED:
            await self._await_exit(init)
        for exec_id in ["", *container.execs]:
            await self._close_io(container.id, exec_id)
        _unmount(container)
        self._containers.pop(container.id, None)
        self._locks.pop(container.id, None)
        self.store.remove(container.id)
        log.info("container %s deleted", container.id)

    async def _runtime_delete(self, container: Container) -> None:
        """``delete --force``, retried for a while when it fails: a sandbox process that was just
        killed stays a zombie until its parent reaps it, and runsc takes it for alive meanwhile."""
        for attempt in range(self.delete_attempts):
            try:
                await self._runtime(container).delete(container.id, force=True)
                return
            except NotFound:
                return
            except KuasarError as err:
                if attempt + 1 == self.delete_attempts:
                    raise
                log.warning("container %s: delete failed (%s); retrying", container.id, err)
                await asyncio.sleep(0.2 * (attempt + 1))

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
                    if proc is container.init and not self.hooks.init_pid_is_own:
                        if proc.status is not TaskStatus.CREATED:
                            self._own(self._runtime_wait(container))
                        continue
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
