"""RecordedTaskBackend: the bookkeeping every task server with persisted container records shares.

Task servers differ in how a process is made (an OCI runtime CLI, a warm wasm runner) but not in
what they keep around it: a :class:`~kuasar_shared.task.records.ContainerRecord` per container,
saved after every change; a lock per container; exits of their own children from the reaper and
of re-adopted processes through pidfds, with the status claimed from the sandboxer's
:class:`~kuasar_shared.task.exits.ExitRecorder` (else 128 + the last signal sent, or 255); stdio
copiers per process; and the Exec/State/Wait/Delete/CloseIO calls, the Shutdown sequence and the
re-adoption loop built on them. Subclasses make, kill and remove processes.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator, Coroutine, Generic, Optional

from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, KuasarError, NotFound, Unimplemented
from kuasar_shared.ids import validate_id
from kuasar_shared.io import ProcessIO, StreamingHub
from kuasar_shared.mounts import unmount_recursive
from kuasar_shared.task.records import C, ContainerStore, Proc
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.process_identity import ExitWatch, is_same_process
from kuasar_shared.statefiles import CorruptState
from kuasar_shared.values import ExitInfo, ProcessState, Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask, ExecProcess, TaskBackend

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["RecordedTaskBackend", "UNKNOWN_EXIT", "utc_now"]

log = logging.getLogger(__name__)

#: exit status of an adopted process whose end this server did not cause (containerd's "unknown")
UNKNOWN_EXIT = 255


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class RecordedTaskBackend(TaskBackend, Generic[C]):
    """Containers recorded in ``store``, with the calls that only touch the records.

    Args:
        store: the container records (``<dir>/<id>.json``) and work directories.
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of processes orphaned by a dead task server.

    Resource handling: :meth:`close` stops watching and copying; containers keep running.
    """

    #: seconds Delete/Shutdown wait for a killed process to be reaped
    kill_timeout = 10.0
    #: seconds to wait for the subreaper's record of a re-adopted process's exit (the sandboxer may be
    #: slow to reap on a loaded machine: 1 s lost exit codes there)
    claim_timeout = 10.0
    #: what runs the containers, in error messages (``terminals are not supported by <name>``)
    name = "this task server"
    #: whether processes may have a terminal (``terminal = true`` stdio)
    terminals = False

    def __init__(self, store: ContainerStore[C], hub: Optional[StreamingHub] = None,
                 exits: Optional[ExitRecorder] = None) -> None:
        self.store = store
        self.hub = hub
        self.exits = exits
        self._containers: dict[str, C] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watches: set[Any] = set()
        self._tasks: set["asyncio.Task[None]"] = set()
        #: stdio copiers per (container id, exec id); FIFO output needs none and survives restarts
        self._io: dict[tuple[str, str], ProcessIO] = {}
        #: our container processes whose exits are recorded durably before they are reaped, so that a
        #: task server killed between reaping one and saving its container loses no exit status
        self._recorded_pids: set[int] = set()
        if exits is not None:
            get_reaper().add_listener(self._record_exit)

    def _record_exit(self, event: ExitEvent) -> None:
        if event.pid in self._recorded_pids and self.exits is not None:
            self.exits.record(event)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dir={self.store.directory!r}, containers={len(self._containers)})"

    def _get(self, container_id: str) -> C:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def containers(self) -> list[C]:
        """The containers this server holds, in no particular order."""
        return list(self._containers.values())

    def metric_collectors(self) -> list["Collector"]:
        """The type's own series for the task server's metrics (called only when they are on, so a type may
        import prometheus-client here); none by default."""
        return []

    def tracked_pids(self) -> set[int]:
        """Pids of the processes this server still waits for (their exit records must stay)."""
        return {proc.pid for container in self._containers.values() for proc in container.procs()
                if proc.pid and proc.status is not TaskStatus.STOPPED}

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    def _own(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task this backend owns (cancelled and awaited by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse_terminal(self, container_id: str, stdio: Stdio) -> None:
        if stdio.terminal and not self.terminals:
            raise Unimplemented(f"container {container_id}: terminals are not supported by {self.name}")

    def _startable(self, container_id: str, exec_id: str) -> tuple[C, Proc]:
        """The container and the process a Start names (call under the container's lock).

        :raise NotFound: no such container or process; FailedPrecondition: it was started already.
        """
        container = self._get(container_id)
        proc = container.proc(exec_id)
        if proc.status is not TaskStatus.CREATED or (exec_id and proc.pid):
            raise FailedPrecondition(f"container {container_id} process {exec_id!r} cannot start: it is "
                                     f"{proc.status.name.lower()}")
        return container, proc

    @contextlib.asynccontextmanager
    async def _creating(self, req: CreateTask) -> AsyncIterator[str]:
        """Hold the lock of a Create's new container; yields its engine namespace (validated).

        :raise AlreadyExists: the id is taken; InvalidArgument: a bad id or namespace.
        """
        validate_id(req.id, "container")
        self._refuse_terminal(req.id, req.stdio)
        async with self._lock(req.id):
            if req.id in self._containers:
                raise AlreadyExists(f"container {req.id} already exists")
            yield validate_id(req.namespace, "namespace") if req.namespace else "default"

    # -- exits -----------------------------------------------------------------------------------
    @staticmethod
    def _lost_status(proc: Proc) -> int:
        """The status of a process whose exit this server cannot know."""
        return 128 + proc.signal if proc.signal else UNKNOWN_EXIT

    def _watch_child(self, container: C, proc: Proc) -> None:
        """Resolve ``proc``'s exit from the reaper (the process is our descendant)."""
        fut = get_reaper().subscribe(proc.pid)
        self._watches.add(fut)
        self._recorded_pids.add(proc.pid)

        def done(f: "asyncio.Future[ExitEvent]") -> None:
            self._watches.discard(f)
            if not f.cancelled():
                self._exited(container, proc, f.result().status, f.result().exited_at)
                self._recorded_pids.discard(proc.pid)
        fut.add_done_callback(done)

    def _adopt(self, container: C, proc: Proc) -> None:
        """Resolve the exit of a re-adopted ``proc`` (not our child) through a pidfd."""
        if self.exits is not None:
            self.exits.discard_stale(proc.pid, proc.start_time)

        def done() -> None:
            self._watches.discard(watch)
            self._own(self._adopted_exit(container, proc))
        watch = ExitWatch(proc.pid, done)
        self._watches.add(watch)

    async def _adopted_exit(self, container: C, proc: Proc) -> None:
        claimed = await self.exits.claim(proc.pid, self.claim_timeout) if self.exits is not None else None
        if claimed is None:
            self._exited(container, proc, self._lost_status(proc), utc_now())
        else:
            self._exited(container, proc, *claimed)

    def _exited(self, container: C, proc: Proc, status: int, at: datetime) -> None:
        """Save the exit; only then drop the durable exit record it may have come from. A type that
        defers this (oci: kill the init's strays first) keeps the record until then, so a server killed
        in between leaves the status to its successor."""
        proc.exited(status, at)
        log.info("container %s process %r pid %d exited with %d", container.id, proc.exec_id, proc.pid, status)
        if container.id in self._containers:
            self.store.save(container)
        if self.exits is not None:
            self.exits.discard(proc.pid)

    async def _await_exit(self, proc: Proc) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(proc.future()), self.kill_timeout)
        except asyncio.TimeoutError:
            log.warning("process pid %d did not exit within %s s", proc.pid, self.kill_timeout)

    async def _close_io(self, container_id: str, exec_id: str) -> None:
        """Let a finished process's output drain to the engine, then release its copiers."""
        pio = self._io.pop((container_id, exec_id), None)
        if pio is not None:
            await pio.wait()
            await pio.close()

    @staticmethod
    def _unmount_rootfs(container: C) -> None:
        """Undo the rootfs mounts this server made (failures are logged: the record goes anyway)."""
        if container.mounted:
            try:
                unmount_recursive(container.rootfs)
            except KuasarError as err:
                log.warning("container %s: cannot unmount %s: %s", container.id, container.rootfs, err)

    # -- what subclasses do ----------------------------------------------------------------------
    def _exec_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The OCI Process object an exec records (a copy of the request's)."""
        return dict(spec)

    @abc.abstractmethod
    async def _remove(self, container: C) -> None:
        """Kill what still runs of ``container``, release what it holds and forget it."""

    @abc.abstractmethod
    async def _kill_all(self, container: C) -> None:
        """SIGKILL every process of ``container`` (Shutdown; failures are logged)."""

    @abc.abstractmethod
    async def _await_killed(self, container: C) -> None:
        """Wait (bounded) for the processes :meth:`_kill_all` killed."""

    @abc.abstractmethod
    def _readopt(self, container: C, proc: Proc, alive: bool) -> None:
        """Take over a recorded, not stopped ``proc`` after a restart (``alive``: same pid and start)."""

    def _belongs(self, container: C, id: str) -> bool:
        """Whether Shutdown(``id``) covers ``container``: its pod's id or its own."""
        return id in (container.sandbox_id, container.id)

    # -- Task API --------------------------------------------------------------------------------
    async def exec(self, req: ExecProcess) -> None:
        validate_id(req.exec_id, "exec")
        self._refuse_terminal(req.id, req.stdio)
        async with self._lock(req.id):
            container = self._get(req.id)
            if req.exec_id in container.execs:
                raise AlreadyExists(f"process {req.exec_id} already exists in container {req.id}")
            if container.init.status is not TaskStatus.RUNNING:
                raise FailedPrecondition(f"container {req.id} is not running")
            container.execs[req.exec_id] = Proc(exec_id=req.exec_id, spec=self._exec_spec(req.spec), stdio={
                "stdin": req.stdio.stdin, "stdout": req.stdio.stdout, "stderr": req.stdio.stderr,
                "terminal": req.stdio.terminal})
            self.store.save(container)

    async def state(self, id: str, exec_id: str) -> ProcessState:
        return self._get(id).state(exec_id)

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

    async def close_io(self, id: str, exec_id: str, stdin: bool) -> None:
        self._get(id).proc(exec_id)
        pio = self._io.get((id, exec_id))
        if stdin and pio is not None:
            pio.close_stdin()

    async def resize_pty(self, id: str, exec_id: str, width: int, height: int) -> None:
        self._get(id).proc(exec_id)
        pio = self._io.get((id, exec_id))
        if pio is None:
            raise FailedPrecondition(f"container {id} process {exec_id!r} has no terminal")
        pio.resize(width, height)

    async def shutdown(self, id: str, now: bool) -> None:
        """Kill every container of sandbox ``id`` (or the container ``id``); ``now``: also delete them."""
        targets = [c for c in list(self._containers.values()) if self._belongs(c, id)]
        for container in targets:
            await self._kill_all(container)
        for container in targets:
            await self._await_killed(container)
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
            for proc in container.procs():
                if proc.status is not TaskStatus.STOPPED and proc.pid:
                    self._readopt(container, proc, is_same_process(proc.pid, proc.start_time))
            self.store.save(container)
            log.info("container %s re-adopted (init %s)", container.id, container.init.status.name.lower())

    async def close(self) -> None:
        """Stop watching and copying (containers keep running; FIFO output keeps flowing)."""
        get_reaper().remove_listener(self._record_exit)
        for watch in list(self._watches):
            watch.cancel()
        self._watches.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for pio in self._io.values():
            await pio.close()
        self._io.clear()
