"""WasmTaskBackend: the Task API for every wasm pod; each container process is one runner process.

Create mounts the rootfs the engine sent, makes the container's cgroup (``linux.cgroupsPath``, else
``<pod cgroup>/<container id>``) with the spec's resources, maps the spec onto a
:class:`~kuasar_wasm_sandboxer.entrypoint.RunSpec`, takes a warm runner, moves it into the cgroup
and has it load and instantiate the module: a missing, escaping or invalid module fails Create.
Start lets ``_start`` run. Exec runs another module of the same rootfs in another runner in the
same cgroup. Kill signals the runner. A runner's exit status is the module's (see
:mod:`kuasar_wasm_sandboxer.runner`), from the reaper while it is our child.

Each container is saved in ``<dir>/<id>.json`` after every change. After a task-server restart,
:meth:`WasmTaskBackend.recover` re-adopts runners whose pid and start time still match and watches
them with pidfds; their exit statuses are claimed from the sandboxer's
:class:`~kuasar_shared.oci.ExitRecorder` (the subreaper they re-parented to), else reported as
128 + the last signal sent, or 255. A container that was created but not started when the old
server died cannot be started any more (its control socket is gone): it is reported stopped.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal as signals
from datetime import datetime, timezone
from typing import Any, Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, KuasarError, NotFound, Unimplemented
from kuasar_shared.ids import validate_id
from kuasar_shared.io import ProcessIO, StreamingHub, open_process_io
from kuasar_shared.mounts import mount_all, unmount_recursive
from kuasar_shared.oci import ExitRecorder, ExitWatch, StdioFds, is_same_process, kill, load_spec, rootfs_path
from kuasar_shared.oci.pod import container_cgroups_path, sandbox_id_of
from kuasar_shared.store import CorruptState
from kuasar_shared.task.backend import (CgroupStats, CreateTask, ExecProcess, ExitInfo, ProcessState,
                                        TaskBackend, TaskStatus)

from kuasar_wasm_sandboxer.container import Container, Proc, WasmContainerStore
from kuasar_wasm_sandboxer.entrypoint import RunSpec, build_run_spec
from kuasar_wasm_sandboxer.runners import Runner, RunnerPool

__all__ = ["WasmTaskBackend", "UNKNOWN_EXIT"]

log = logging.getLogger(__name__)

#: exit status of a process whose end this server did not see (containerd's "unknown")
UNKNOWN_EXIT = 255


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _memory_limit(spec: dict[str, Any]) -> int:
    memory = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {})
    try:
        return max(int(memory.get("limit") or 0), 0)
    except (TypeError, ValueError):
        return 0


class WasmTaskBackend(TaskBackend):
    """Containers of every wasm pod.

    Args:
        directory: container records (``<id>.json``) and work files (run specs).
        pool: where runner processes come from.
        pods_dir: the sandboxer's ``--dir`` (pod records with the pod's cgroup).
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of runners orphaned by a dead task server.
    """

    #: seconds Delete/Shutdown wait for a killed runner to exit
    kill_timeout = 10.0

    def __init__(self, directory: str, pool: RunnerPool, pods_dir: str = "",
                 hub: Optional[StreamingHub] = None, exits: Optional[ExitRecorder] = None) -> None:
        self.store = WasmContainerStore(directory)
        self.pool = pool
        self.pods_dir = pods_dir
        self.hub = hub
        self.exits = exits
        self._containers: dict[str, Container] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watches: set[Any] = set()
        self._tasks: set["asyncio.Task[None]"] = set()
        #: created, not yet started runners by (container id, exec id)
        self._pending: dict[tuple[str, str], Runner] = {}
        #: stdio copiers by (container id, exec id)
        self._io: dict[tuple[str, str], ProcessIO] = {}

    def _get(self, container_id: str) -> Container:
        try:
            return self._containers[container_id]
        except KeyError:
            raise NotFound(f"container {container_id} not found") from None

    def _lock(self, container_id: str) -> asyncio.Lock:
        return self._locks.setdefault(container_id, asyncio.Lock())

    # -- exits -----------------------------------------------------------------------------------
    def _watch_child(self, container: Container, proc: Proc) -> None:
        fut = get_reaper().subscribe(proc.pid)
        self._watches.add(fut)

        def done(f: "asyncio.Future[ExitEvent]") -> None:
            self._watches.discard(f)
            if not f.cancelled():
                self._exited(container, proc, f.result().status, f.result().exited_at)
        fut.add_done_callback(done)

    def _watch_adopted(self, container: Container, proc: Proc) -> None:
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
        runner = self._pending.pop((container.id, proc.exec_id), None)
        if runner is not None:
            runner.control.close()
        proc.exited(status, at)
        log.info("container %s process %r pid %d exited with %d", container.id, proc.exec_id, proc.pid, status)
        if container.id in self._containers:
            self.store.save(container)

    # -- runners ---------------------------------------------------------------------------------
    async def _launch(self, container: Container, proc: Proc, run: RunSpec) -> Runner:
        """Start a runner for ``run`` in the container's cgroup with ``proc``'s stdio, loaded and
        instantiated but not started. On failure nothing of it remains."""
        spec_path = self.store.run_spec_path(container.id, proc.exec_id)
        run.save(spec_path)
        name = run.name
        pio = await open_process_io(proc.stdio_value(), self.hub, name=name.replace("/", "-"))
        runner = self.pool.take()
        try:
            if container.cgroup:
                Cgroup.open(container.cgroup).add_pid(runner.pid)
            reply = await runner.configure(name, spec_path, StdioFds(stdin=pio.stdin, stdout=pio.stdout,
                                                                     stderr=pio.stderr))
        except BaseException:
            runner.abandon()
            await pio.close()
            raise
        finally:
            pio.child_started()
        log.debug("%s: module %s in %s ms by runner pid %d", name,
                  "compiled" if reply.get("compiled") else "loaded from the cache", reply.get("load_ms"), runner.pid)
        self._io[(container.id, proc.exec_id)] = pio
        proc.pid, proc.start_time = runner.pid, runner.start_time()
        self._watch_child(container, proc)
        return runner

    # -- Task API --------------------------------------------------------------------------------
    async def create(self, req: CreateTask) -> int:
        validate_id(req.id, "container")
        if req.stdio.terminal:
            raise Unimplemented(f"container {req.id}: terminals are not supported by wasm containers")
        async with self._lock(req.id):
            if req.id in self._containers:
                raise AlreadyExists(f"container {req.id} already exists")
            namespace = validate_id(req.namespace, "namespace") if req.namespace else "default"
            spec = load_spec(req.bundle)
            sandbox_id = sandbox_id_of(spec, req.bundle)
            container = Container(id=req.id, bundle=req.bundle, namespace=namespace, sandbox_id=sandbox_id,
                                  rootfs=rootfs_path(req.bundle, spec),
                                  cgroup=container_cgroups_path(spec, self.pods_dir, sandbox_id, req.id))
            container.init.stdio = {"stdin": req.stdio.stdin, "stdout": req.stdio.stdout,
                                    "stderr": req.stdio.stderr}
            try:
                if req.rootfs:
                    os.makedirs(container.rootfs, exist_ok=True)
                    container.mounted = len(mount_all(req.rootfs, container.rootfs))
                run = build_run_spec(req.id, spec.get("process") or {}, container.rootfs, spec.get("mounts") or [],
                                     bool((spec.get("root") or {}).get("readonly")), _memory_limit(spec))
                if container.cgroup:
                    self._make_cgroup(container, (spec.get("linux") or {}).get("resources") or {})
                runner = await self._launch(container, container.init, run)
            except BaseException:
                self._release(container)
                self.pool.warm_up()
                raise
            self._pending[(req.id, "")] = runner
            self._containers[req.id] = container
            self.store.save(container)
            log.info("container %s created in sandbox %s, runner pid %d", req.id, sandbox_id or "-", runner.pid)
            return runner.pid

    def _make_cgroup(self, container: Container, resources: dict[str, Any]) -> None:
        cgroup = Cgroup.open(container.cgroup)
        try:
            cgroup.create()
            container.cgroup_owned_depth = cgroup.owned_depth
            cgroup.set_resources(resources)
        except OSError as err:
            raise FailedPrecondition(f"container {container.id}: cannot set up cgroup {container.cgroup}: "
                                     f"{err}") from err

    def _release(self, container: Container) -> None:
        """Undo cgroup, mounts and files of a container (failures are logged: the record goes anyway)."""
        if container.cgroup:
            try:
                Cgroup.open(container.cgroup, owned_depth=container.cgroup_owned_depth).delete()
            except (OSError, KuasarError) as err:
                log.warning("container %s: cannot remove cgroup %s: %s", container.id, container.cgroup, err)
        if container.mounted:
            try:
                unmount_recursive(container.rootfs)
            except KuasarError as err:
                log.warning("container %s: cannot unmount %s: %s", container.id, container.rootfs, err)
        self.store.remove(container.id)

    async def start(self, id: str, exec_id: str) -> int:
        async with self._lock(id):
            container = self._get(id)
            proc = container.proc(exec_id)
            if proc.status is not TaskStatus.CREATED or (exec_id and proc.pid):
                raise FailedPrecondition(f"container {id} process {exec_id!r} cannot start: it is "
                                         f"{proc.status.name.lower()}")
            if exec_id:
                if container.init.status is not TaskStatus.RUNNING:
                    raise FailedPrecondition(f"container {id} is not running; cannot start exec {exec_id}")
                run = build_run_spec(f"{id}/{exec_id}", proc.spec or {}, container.rootfs,
                                     self._spec_mounts(container), False, 0)
                try:
                    runner = await self._launch(container, proc, run)
                except BaseException:
                    self.pool.warm_up()
                    raise
            else:
                pending = self._pending.pop((id, ""), None)
                if pending is None:
                    raise FailedPrecondition(f"container {id} cannot start: its runner is gone "
                                             f"(the task server restarted before Start)")
                runner = pending
            runner.start()
            proc.status = TaskStatus.RUNNING
            self.store.save(container)
            # warm the next runner only now: its ~100 ms of imports must not compete with this start
            self.pool.warm_up()
            return proc.pid

    def _spec_mounts(self, container: Container) -> list[Any]:
        try:
            return list(load_spec(container.bundle).get("mounts") or [])
        except KuasarError:
            return []

    async def exec(self, req: ExecProcess) -> None:
        validate_id(req.exec_id, "exec")
        if req.stdio.terminal:
            raise Unimplemented(f"container {req.id}: terminals are not supported by wasm containers")
        async with self._lock(req.id):
            container = self._get(req.id)
            if req.exec_id in container.execs:
                raise AlreadyExists(f"process {req.exec_id} already exists in container {req.id}")
            if container.init.status is not TaskStatus.RUNNING:
                raise FailedPrecondition(f"container {req.id} is not running")
            container.execs[req.exec_id] = Proc(exec_id=req.exec_id, spec=dict(req.spec), stdio={
                "stdin": req.stdio.stdin, "stdout": req.stdio.stdout, "stderr": req.stdio.stderr})
            self.store.save(container)

    async def state(self, id: str, exec_id: str) -> ProcessState:
        return self._get(id).state(exec_id)

    async def kill(self, id: str, exec_id: str, signal: int, all: bool) -> None:
        container = self._get(id)
        proc = container.proc(exec_id)
        targets = [proc] + ([p for p in container.execs.values()] if all and not exec_id else [])
        alive = [p for p in targets if p.status is not TaskStatus.STOPPED and is_same_process(p.pid, p.start_time)]
        if not any(p is proc for p in alive):
            raise NotFound(f"container {id} process {exec_id!r} is not running")
        for target in alive:
            target.signal = signal
            try:
                os.kill(target.pid, signal)
            except ProcessLookupError:
                continue

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
        """Kill what still runs of the container, release its resources and forget it."""
        pending = self._pending.pop((container.id, ""), None)
        if pending is not None:
            container.init.signal = signals.SIGKILL
            pending.abandon()
        for proc in container.procs():
            if proc.status is not TaskStatus.STOPPED and proc.pid:
                if is_same_process(proc.pid, proc.start_time):
                    kill(proc.pid)
                await self._await_exit(proc)
        for exec_id in ["", *container.execs]:
            await self._close_io(container.id, exec_id)
        self._release(container)
        self._containers.pop(container.id, None)
        self._locks.pop(container.id, None)
        log.info("container %s deleted", container.id)

    async def _close_io(self, container_id: str, exec_id: str) -> None:
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
        return [p.pid for p in container.procs() if p.pid and p.status is not TaskStatus.STOPPED]

    async def stats(self, id: str) -> CgroupStats:
        container = self._get(id)
        if not container.cgroup:
            return CgroupStats()
        try:
            return Cgroup.open(container.cgroup).stats()
        except NotFound:
            return CgroupStats()

    async def update(self, id: str, resources: dict[str, Any], annotations: dict[str, str]) -> None:
        """New cgroup limits; a running module keeps the store memory limit it started with."""
        container = self._get(id)
        if not container.cgroup:
            raise FailedPrecondition(f"container {id} has no cgroup to update")
        try:
            Cgroup.open(container.cgroup).set_resources(resources)
        except OSError as err:
            raise FailedPrecondition(f"container {id}: cannot apply resources: {err}") from err

    async def close_io(self, id: str, exec_id: str, stdin: bool) -> None:
        self._get(id).proc(exec_id)
        pio = self._io.get((id, exec_id))
        if stdin and pio is not None:
            pio.close_stdin()

    async def shutdown(self, id: str, now: bool) -> None:
        """Kill every container of sandbox ``id`` (or the container ``id``); ``now``: also delete them."""
        targets = [c for c in list(self._containers.values()) if id in (c.sandbox_id, c.id)]
        for container in targets:
            for proc in container.procs():
                if proc.status is not TaskStatus.STOPPED and is_same_process(proc.pid, proc.start_time):
                    proc.signal = signals.SIGKILL
                    kill(proc.pid)
        for container in targets:
            for proc in container.procs():
                if proc.pid and proc.status is not TaskStatus.STOPPED:
                    await self._await_exit(proc)
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
                if proc.status is TaskStatus.STOPPED or not proc.pid:
                    continue
                alive = is_same_process(proc.pid, proc.start_time)
                if alive and proc.status is TaskStatus.RUNNING:
                    if self.exits is not None:
                        self.exits.discard(proc.pid)
                    self._watch_adopted(container, proc)
                    continue
                if alive:  # created, never started: its control socket died with the old server
                    kill(proc.pid)
                proc.exited(128 + proc.signal if proc.signal else UNKNOWN_EXIT, _now())
            self.store.save(container)
            log.info("container %s re-adopted (init %s)", container.id, container.init.status.name.lower())

    async def close(self) -> None:
        """Stop watching and copying; running modules keep running (FIFO output keeps flowing)."""
        for watch in list(self._watches):
            watch.cancel()
        self._watches.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self._pending.values():
            runner.control.close()
        self._pending.clear()
        for pio in self._io.values():
            await pio.close()
        self._io.clear()
        await self.pool.close()
