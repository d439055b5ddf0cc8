"""OciTaskBackend: the Task API over an OCI runtime command line, for every pod of one sandbox type.

One implementation drives any OCI runtime CLI (runc, runsc, youki...): containers, exec
processes, exit statuses, persistence in ``<dir>/<id>.json`` after every change, and re-adoption
after a restart. What differs between runtimes is small and lives in :class:`OciHooks`: how a spec
is adapted to the pod (runc joins the pod's pinned namespaces; runsc joins the pod's sandbox
through the CRI annotations), which binary, ``--root`` and global options are used, how exits
are observed, and what else watches a container (the VM guest's OOM events). The bookkeeping
shared with task servers that run no OCI runtime is
:class:`~kuasar_shared.task.recorded.RecordedTaskBackend`.

Exits. The task server is a child subreaper, so processes re-parent to it when the runtime CLI
exits and their statuses come from :mod:`kuasar_shared.daemon.reaper`, subscribed by the pid the
runtime wrote to ``--pid-file``. That pid is the container's init for runc; for runsc it is the
sandbox process shared by the whole pod, so init exits come from ``<runtime> wait`` instead
(:attr:`OciHooks.init_pid_is_own`). runsc exec pids are waiters that exit with the process's
status but do not forward signals, so execs are signalled with ``<runtime> kill --pid``
(:attr:`OciHooks.internal_exec_pids`). After ``kill -9`` and a restart, :meth:`OciTaskBackend.recover`
re-adopts processes whose pid and start time still match and watches them with pidfds (or a new
``wait``). Their exit status is no longer ours to reap: it is claimed from the
:class:`~kuasar_shared.task.exits.ExitRecorder` of the subreaper they re-parented to (the sandboxer),
else reported as 128 + the last signal this server sent, or 255 (containerd's "unknown").

Stray processes. When the init of a container without a PID namespace of its own exits, its
children live on in the pod's namespace, holding the container's output FIFOs open: the engine
then waits forever for that output to end before it deletes the task. As containerd's runc shim
does (``ShouldKillAllOnExit``), every remaining process of such a container is killed
(``<runtime> kill --all``) before the init's exit is reported, and a Kill with ``all`` still
reaches them after the init is gone.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import json
import logging
import os
import signal as signals
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Optional

from kuasar_shared import tracing
from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import FailedPrecondition, KuasarError, NotFound
from kuasar_shared.io import ProcessIO, StreamingHub, open_process_io
from kuasar_shared.ids import validate_id
from kuasar_shared.mounts import mount_all, unmount_recursive
from kuasar_shared.task.records import Container, ContainerStore, Proc
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.process_identity import is_same_process, start_time
from kuasar_shared.task.recorded import UNKNOWN_EXIT, RecordedTaskBackend, utc_now
from kuasar_shared.oci.runtime import OciRuntime, StdioFds, read_pid_file
from kuasar_shared.oci.spec import clamp_oom_score_adj, has_own_pid_namespace, load_spec, rootfs_path, save_spec
from kuasar_shared.values import CgroupStats, Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask

__all__ = ["OciTaskBackend", "OciHooks", "Placement", "UNKNOWN_EXIT"]

log = logging.getLogger(__name__)


def _own_pid_namespace(container: Container) -> bool:
    """Whether the container's spec gives it a PID namespace of its own (an unreadable spec: no,
    so that its processes are killed, as containerd's shim decides)."""
    try:
        return has_own_pid_namespace(load_spec(container.bundle))
    except KuasarError:
        return False


def _cgroup_of(container: Container) -> Optional[Cgroup]:
    """The host cgroup of the container's spec (a cgroupfs ``linux.cgroupsPath``), if any."""
    try:
        path = str((load_spec(container.bundle).get("linux") or {}).get("cgroupsPath") or "")
    except KuasarError:
        return None
    if not path.startswith("/") or ":" in path:  # relative paths and systemd slices are the runtime's
        return None
    try:
        return Cgroup.open(path)
    except KuasarError:
        return None


def _stats_from_runtime(data: dict[str, Any]) -> CgroupStats:
    """CgroupStats from the ``data`` of ``<runtime> events --stats``."""
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


def _runs_with_argument(argument: str) -> bool:
    """Whether a live process has ``argument`` on its command line."""
    needle = argument.encode() + b"\0"
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        return True
            except OSError:
                continue
    return False


def _remove_files(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fds(pio: ProcessIO) -> StdioFds:
    return StdioFds(stdin=pio.stdin, stdout=pio.stdout, stderr=pio.stderr)


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
    #: True when the runtime makes terminals for ``terminal = true`` processes (``--console-socket``)
    terminals = False

    @abc.abstractmethod
    def place(self, req: CreateTask, spec: dict[str, Any], namespace: str) -> Placement:
        """Adapt ``spec`` (in place; the caller saves it) to the container's pod and return how
        the runtime is invoked. ``namespace`` is the engine namespace, already validated.

        :raise KuasarError: when the container cannot run (e.g. its pod is unknown).
        """

    def adapt_process(self, process: dict[str, Any]) -> None:
        """Adapt an OCI Process object (a container's init in :meth:`place`'s spec, or an exec's)
        to what the runtime accepts, in place. The default changes nothing."""

    def created(self, container_id: str, spec: dict[str, Any]) -> None:
        """The container exists with the adapted ``spec`` (e.g. to start watching its cgroup)."""

    def removed(self, container_id: str) -> None:
        """The container is gone (undo what :meth:`created` started)."""

    async def wait_init(self, runtime: OciRuntime, container_id: str, sandbox_id: str) -> int:
        """The exit status of a container's init when :attr:`init_pid_is_own` is False; the default
        runs ``<runtime> wait``.

        :raise KuasarError: when the runtime cannot tell.
        """
        return await runtime.wait(container_id)


class OciTaskBackend(RecordedTaskBackend[Container]):
    """Containers of every pod of one sandbox type, run by an OCI runtime CLI.

    Args:
        directory: where container records (``<id>.json``) and work files live.
        hooks: the runtime-specific parts.
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of processes orphaned by a dead task server.

    Resource handling: :meth:`close` stops watching and copying; containers keep running.
    """

    #: tries of ``<runtime> delete --force`` before Delete fails
    delete_attempts = 5

    def __init__(self, directory: str, hooks: OciHooks, hub: Optional[StreamingHub] = None,
                 exits: Optional[ExitRecorder] = None) -> None:
        super().__init__(ContainerStore(directory, Container), hub, exits)
        self.hooks = hooks
        self.name = hooks.name
        self.terminals = hooks.terminals
        #: containers whose init exited and whose stray processes are being killed
        self._ending: set[str] = set()

    @staticmethod
    def _runtime(container: Container) -> OciRuntime:
        return OciRuntime(container.binary, container.root, container.global_args)

    async def _runtime_wait(self, container: Container) -> None:
        """Resolve the init's exit from :meth:`OciHooks.wait_init` (unknown when the runtime cannot tell)."""
        proc = container.init
        try:
            status = await self.hooks.wait_init(self._runtime(container), container.id, container.sandbox_id)
        except KuasarError as err:
            log.warning("container %s: the runtime cannot report the init's exit: %s", container.id, err)
            status = self._lost_status(proc)
        if proc.status is not TaskStatus.STOPPED:
            self._exited(container, proc, status, utc_now())

    def _exited(self, container: Container, proc: Proc, status: int, at: datetime) -> None:
        """Record an exit; for the init of a container sharing its PID namespace, kill the
        container's remaining processes first (see the module docstring)."""
        if proc is not container.init or proc.status is TaskStatus.STOPPED or _own_pid_namespace(container):
            super()._exited(container, proc, status, at)
        elif container.id not in self._ending:
            self._ending.add(container.id)
            self._own(self._kill_strays_then_exit(container, proc, status, at))

    async def _kill_strays_then_exit(self, container: Container, proc: Proc, status: int, at: datetime) -> None:
        try:
            await self._runtime(container).kill(container.id, signals.SIGKILL, all=True)
            log.info("container %s: init exited; its remaining processes were killed", container.id)
        except KuasarError as err:
            log.warning("container %s: cannot kill the processes left by its init: %s", container.id, err)
        finally:
            self._ending.discard(container.id)
            super()._exited(container, proc, status, at)

    def _exec_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        spec = dict(spec)
        clamp_oom_score_adj(spec)
        self.hooks.adapt_process(spec)
        return spec

    async def create(self, req: CreateTask) -> int:
        async with self._creating(req) as namespace:
            spec = load_spec(req.bundle)
            placement = self.hooks.place(req, spec, namespace)
            clamp_oom_score_adj(spec.setdefault("process", {}))
            spec["process"]["terminal"] = req.stdio.terminal
            save_spec(req.bundle, spec)
            sandbox_id = placement.sandbox_id
            container = Container(id=req.id, bundle=req.bundle, namespace=namespace, sandbox_id=sandbox_id,
                                  binary=placement.binary, root=placement.root,
                                  global_args=placement.global_args, rootfs=rootfs_path(req.bundle, spec))
            container.init.stdio = {"stdin": req.stdio.stdin, "stdout": req.stdio.stdout,
                                    "stderr": req.stdio.stderr, "terminal": req.stdio.terminal}
            if req.rootfs:
                os.makedirs(container.rootfs, exist_ok=True)
                with tracing.span("rootfs mount", container_id=req.id):
                    container.mounted = len(mount_all(req.rootfs, container.rootfs))
            try:
                with tracing.span("io setup", container_id=req.id):
                    pio = await open_process_io(Stdio() if self.hooks.stdio_at_start else req.stdio, self.hub,
                                                name=req.id)
                try:
                    pid_file = os.path.join(self.store.work_dir(req.id), "init.pid")
                    with tracing.span("runtime create", container_id=req.id, runtime=container.binary):
                        pid = await self._runtime(container).create(req.id, req.bundle, pid_file, _fds(pio),
                                                                    console_socket=pio.console_socket)
                    try:
                        await pio.attach_console()
                    except BaseException:
                        with contextlib.suppress(KuasarError):
                            await self._runtime_delete(container)
                        raise
                except BaseException:
                    await pio.close()
                    raise
                finally:
                    pio.child_started()
            except BaseException:
                self._unmount_rootfs(container)
                self.store.remove(req.id)
                raise
            container.init.pid, container.init.start_time = pid, start_time(pid)
            if not self.hooks.stdio_at_start:
                self._io[(req.id, "")] = pio
            self._containers[req.id] = container
            if self.hooks.init_pid_is_own:
                self._watch_child(container, container.init)
            self.store.save(container)
            self.hooks.created(req.id, spec)
            log.info("container %s created in sandbox %s, pid %d", req.id, sandbox_id or "-", pid)
            return pid

    async def start(self, id: str, exec_id: str) -> int:
        async with self._lock(id):
            container, proc = self._startable(id, exec_id)
            if exec_id:
                await self._start_exec(container, proc)
                return proc.pid
            await self._start_init(container)
            if not self.hooks.init_pid_is_own:
                self._own(self._runtime_wait(container))
            if proc.status is TaskStatus.CREATED:
                proc.status = TaskStatus.RUNNING
            self.store.save(container)
            return proc.pid

    async def _start_init(self, container: Container) -> None:
        if not self.hooks.stdio_at_start:
            with tracing.span("runtime start", container_id=container.id, runtime=container.binary):
                await self._runtime(container).start(container.id)
            return
        with tracing.span("io setup", container_id=container.id):
            pio = await open_process_io(container.init.stdio_value(), self.hub, name=container.id)
        try:
            with tracing.span("runtime start", container_id=container.id, runtime=container.binary):
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
            json.dump(dict(proc.spec or {}, terminal=proc.stdio_value().terminal), handle)
        pid_file = os.path.join(work, proc.exec_id + ".pid")
        internal = os.path.join(work, proc.exec_id + ".ipid") if self.hooks.internal_exec_pids else None
        with tracing.span("io setup", container_id=container.id, exec_id=proc.exec_id):
            pio = await open_process_io(proc.stdio_value(), self.hub, name=f"{container.id}-{proc.exec_id}")
        runtime_files = [path for path in (spec_path, pid_file, internal) if path is not None]
        try:
            with tracing.span("runtime exec", container_id=container.id, exec_id=proc.exec_id,
                              runtime=container.binary):
                pid = await self._runtime(container).exec(
                    container.id, spec_path, pid_file, os.path.join(work, "exec-log.json"), _fds(pio),
                    console_socket=pio.console_socket, internal_pid_file=internal)
            await pio.attach_console()
            if internal is not None:
                proc.runtime_pid = read_pid_file(internal)
        except BaseException:
            await pio.close()
            _remove_files(runtime_files)
            raise
        finally:
            pio.child_started()
        self._io[(container.id, proc.exec_id)] = pio
        proc.pid, proc.start_time, proc.status = pid, start_time(pid), TaskStatus.RUNNING
        self._watch_child(container, proc)
        # the record says RUNNING before the runtime's pid file goes: a successor of a server killed in
        # between judges the Start by one or the other (interrupted_start), never by neither, which ran
        # the exec a second time
        self.store.save(container)
        _remove_files(runtime_files)

    async def interrupted_create(self, req: CreateTask) -> None:
        """Undo what a Create cut short by a restart left without a record: the runtime's container
        (``delete --force``) and the rootfs mounts, so that the Create can run again."""
        namespace = validate_id(req.namespace, "namespace") if req.namespace else "default"
        spec = load_spec(req.bundle)
        placement = self.hooks.place(req, spec, namespace)
        container = Container(id=req.id, bundle=req.bundle, namespace=namespace, sandbox_id=placement.sandbox_id,
                              binary=placement.binary, root=placement.root, global_args=placement.global_args,
                              rootfs=rootfs_path(req.bundle, spec))
        async with self._lock(req.id):
            with contextlib.suppress(KuasarError):
                await self._runtime_delete(container)
            if req.rootfs and os.path.ismount(container.rootfs):
                unmount_recursive(container.rootfs)
            self.store.remove(req.id)
        log.info("container %s: what an interrupted Create left was removed", req.id)

    async def interrupted_start(self, id: str, exec_id: str) -> Optional[int]:
        """Judge a Start a killed task server left unanswered by what the runtime leaves behind.

        Init: the runtime's state says whether ``start`` ran. Exec: the runtime writes
        ``<exec id>.pid`` once the process runs; a ``<runtime> exec`` of the dead server that is
        still running (its command line names ``<exec id>.process.json``) is waited for first.
        """
        async with self._lock(id):
            container = self._get(id)
            proc = container.proc(exec_id)
            if proc.status is not TaskStatus.CREATED:
                return proc.pid
            if not exec_id:
                try:
                    status = (await self._runtime(container).state(id)).get("status")
                except KuasarError:
                    return None
                if status == "created":
                    return None
            else:
                pid = await self._started_exec(container, proc)
                if not pid:
                    return None
                proc.pid, proc.start_time = pid, start_time(pid)
            proc.status = TaskStatus.RUNNING
            self.store.save(container)
            self._readopt(container, proc, is_same_process(proc.pid, proc.start_time))
            log.info("container %s process %r: the interrupted Start had started pid %d", id, exec_id, proc.pid)
            return proc.pid

    async def _started_exec(self, container: Container, proc: Proc, timeout: float = 30.0) -> int:
        """The pid of an exec a dead server's runtime call started, else 0; removes that call's files."""
        work = self.store.work_dir(container.id)
        spec_path = os.path.join(work, proc.exec_id + ".process.json")
        pid_file, internal = (os.path.join(work, proc.exec_id + ext) for ext in (".pid", ".ipid"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pid = 0
        while True:
            # look for the runtime before its pid file: it writes the file, then exits, so a runtime that is
            # gone by the look has left its file for the read below (the other order lost an exec that
            # finished during the /proc scan, and the Start then ran it a second time)
            runtime_runs = _runs_with_argument(spec_path)
            if os.path.exists(pid_file):
                with contextlib.suppress(KuasarError):
                    pid = read_pid_file(pid_file)
                    if self.hooks.internal_exec_pids:
                        proc.runtime_pid = read_pid_file(internal)
            if pid or not runtime_runs or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        _remove_files([spec_path, pid_file, internal])
        return pid

    async def kill(self, id: str, exec_id: str, signal: int, all: bool) -> None:
        container = self._get(id)
        proc = container.proc(exec_id)
        if not exec_id and all and proc.status is TaskStatus.STOPPED:
            await self._kill_remaining(container, signal)
            return
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
            if proc.status is TaskStatus.CREATED:
                # never started and the runtime cannot signal it (runsc): its Wait only ends at
                # Delete, so containerd must hear FailedPrecondition (go on deleting), not NotFound
                # (wait for the exit first)
                raise
            raise NotFound(str(err)) from err

    async def _kill_remaining(self, container: Container, signal: int) -> None:
        """Kill(all) after the init exited: what is left of the container still gets the signal.

        :raise NotFound: nothing of the container is left to signal (what containerd expects).
        """
        runtime = self._runtime(container)
        try:
            left = await runtime.ps(container.id)
            if left:
                await runtime.kill(container.id, signal, all=True)
        except KuasarError as err:
            raise NotFound(f"container {container.id} is not running: {err}") from err
        if not left:
            raise NotFound(f"container {container.id} is not running")

    async def _remove(self, container: Container) -> None:
        """Delete the runtime's container (killing a created init), unmount and forget it."""
        await self._runtime_delete(container)
        init = container.init
        if init.status is TaskStatus.CREATED and not self.hooks.init_pid_is_own:
            super()._exited(container, init, 128 + signals.SIGKILL, utc_now())  # never started: no waiter
        elif init.status is not TaskStatus.STOPPED:
            await self._await_exit(init)
        for exec_id in ["", *container.execs]:
            await self._close_io(container.id, exec_id)
        self._unmount_rootfs(container)
        self.hooks.removed(container.id)
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

    async def pids(self, id: str) -> list[int]:
        container = self._get(id)
        return await self._runtime(container).ps(id)

    async def stats(self, id: str) -> CgroupStats:
        """The runtime's stats sample plus the OOM kill count of the container's cgroup; once the
        init has exited (the runtime then reports nothing) the cgroup's own counters, which the
        engine reads to tell an OOM kill (``memory_oom_kill``) until the container is deleted.

        :raise NotFound: neither the runtime nor the cgroup can tell.
        """
        container = self._get(id)
        cgroup = _cgroup_of(container)
        try:
            data = await self._runtime(container).stats(id)
        except KuasarError as err:
            if cgroup is None:
                raise
            try:
                return cgroup.stats()
            except NotFound:
                raise NotFound(f"container {id} has no stats: {err}") from err
        stats = _stats_from_runtime(data)
        if cgroup is not None and cgroup.exists():
            stats = replace(stats, memory_oom_kill=cgroup.stats().memory_oom_kill)
        return stats

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

    async def _kill_all(self, container: Container) -> None:
        if container.init.status is not TaskStatus.STOPPED:
            container.init.signal = signals.SIGKILL
            try:
                await self._runtime(container).kill(container.id, signals.SIGKILL, all=True)
            except KuasarError as err:
                log.warning("container %s: kill at shutdown failed: %s", container.id, err)

    async def _await_killed(self, container: Container) -> None:
        if container.init.pid and container.init.status is not TaskStatus.CREATED:
            await self._await_exit(container.init)

    def _readopt(self, container: Container, proc: Proc, alive: bool) -> None:
        if not alive:  # it ended while no task server ran: the sandboxer recorded how
            self._own(self._adopted_exit(container, proc))
        elif proc is container.init and not self.hooks.init_pid_is_own:
            if proc.status is not TaskStatus.CREATED:
                self._own(self._runtime_wait(container))
        else:
            self._adopt(container, proc)
