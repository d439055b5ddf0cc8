"""WasmTaskBackend: the Task API for every wasm pod; each container process is one runner process.

Create mounts the rootfs the engine sent, makes the container's cgroup (``linux.cgroupsPath``, else
``<pod cgroup>/<container id>``) with the spec's resources, maps the spec onto a
:class:`~kuasar_wasm_sandboxer.entrypoint.RunSpec`, has the fork-server fork a runner, moves it
into the cgroup and has it load and instantiate the module: a missing, escaping or invalid module fails Create.
Start lets ``_start`` run. Exec runs another module of the same rootfs in another runner in the
same cgroup. Kill signals the runner. A runner's exit status is the module's (see
``native/runner.c``), from the reaper while it is our child (runners re-parent to
this server, see :mod:`kuasar_wasm_sandboxer.forkserver`). Stats come from the container's cgroup.

Each container is saved in ``<dir>/<id>.json`` after every change. After a task-server restart,
:meth:`WasmTaskBackend.recover` re-adopts runners whose pid and start time still match and watches
them with pidfds; their exit statuses are claimed from the sandboxer's
:class:`~kuasar_shared.task.exits.ExitRecorder` (the subreaper they re-parented to), else reported as
128 + the last signal sent, or 255. A container that was created but not started when the old
server died cannot be started any more (its control socket is gone): it is reported stopped; an
exec in that state is started again by the Start the engine retries. Whether the dead server's last
Start reached its runner is read from the runner's run spec, which a started runner removes (see
:mod:`kuasar_wasm_sandboxer.protocol`).
"""
from __future__ import annotations

import logging
import os
import signal as signals
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import FailedPrecondition, InvalidArgument, KuasarError, NotFound
from kuasar_shared.io import ProcessIO, StreamingHub, open_process_io
from kuasar_shared.mounts import mount_all
from kuasar_shared.process_identity import is_same_process, kill
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.oci import StdioFds, load_spec, rootfs_path
from kuasar_shared.oci.pod import container_cgroups_path, sandbox_id_of
from kuasar_shared.task.recorded import UNKNOWN_EXIT, RecordedTaskBackend, utc_now
from kuasar_shared.values import CgroupStats, TaskStatus
from kuasar_shared.task.backend import CreateTask

from kuasar_wasm_sandboxer.cache import CacheCounters
from kuasar_wasm_sandboxer.container import Container, Proc, WasmContainerStore
from kuasar_wasm_sandboxer.entrypoint import RunSpec, build_run_spec
from kuasar_wasm_sandboxer.runner_control import ForkServer, Runner

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["WasmTaskBackend", "UNKNOWN_EXIT"]

log = logging.getLogger(__name__)


def _memory_limit(spec: dict[str, Any]) -> int:
    memory = (((spec.get("linux") or {}).get("resources") or {}).get("memory") or {})
    try:
        return max(int(memory.get("limit") or 0), 0)
    except (TypeError, ValueError):
        return 0


class WasmTaskBackend(RecordedTaskBackend[Container]):
    """Containers of every wasm pod.

    Args:
        directory: container records (``<id>.json``) and work files (run specs).
        forkserver: where runner processes come from (started by the caller, closed by :meth:`close`).
        pods_dir: the sandboxer's ``--dir`` (pod records with the pod's cgroup).
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of runners orphaned by a dead task server.

    The compiled-module cache (the fork-server's) is looked up here, so that a runner of a cached
    module neither reads nor hashes anything.
    """

    name = "wasm containers"
    store: WasmContainerStore
    #: seconds recovery waits for a runner of a created process to show whether it got its start
    start_verdict_timeout = 2.0

    def __init__(self, directory: str, forkserver: ForkServer, pods_dir: str = "",
                 hub: Optional[StreamingHub] = None, exits: Optional[ExitRecorder] = None) -> None:
        super().__init__(WasmContainerStore(directory), hub, exits)
        self.forkserver = forkserver
        self.pods_dir = pods_dir
        self.cache = forkserver.cache
        #: module loads by outcome, for the metrics
        self.cache_counters = CacheCounters()
        #: created, not yet started runners by (container id, exec id)
        self._pending: dict[tuple[str, str], Runner] = {}

    def _exited(self, container: Container, proc: Proc, status: int, at: datetime) -> None:
        self._drop_pending(container.id, proc.exec_id)
        super()._exited(container, proc, status, at)

    def _drop_pending(self, container_id: str, exec_id: str) -> Optional[Runner]:
        """Forget a created, not started runner: close its control socket (it exits by itself) and
        release the stdio it never received, so that copiers see EOF."""
        runner = self._pending.pop((container_id, exec_id), None)
        if runner is not None:
            runner.control.close()
            pio = self._io.get((container_id, exec_id))
            if pio is not None:
                pio.child_started()
        return runner

    # -- runners ---------------------------------------------------------------------------------
    async def _launch(self, container: Container, proc: Proc, run: RunSpec) -> Runner:
        """Fork a runner for ``run`` into the container's cgroup, loaded and instantiated but not
        started and without stdio (it gets it with :meth:`Runner.start`: a runner that is never
        started never holds the engine's FIFOs, so a task server dying before Start cannot end the
        engine's output early). Nobody watches it yet (:meth:`_track`). On failure nothing of it
        remains."""
        spec_path = self.store.run_spec_path(container.id, proc.exec_id)
        key = ""
        if self.cache is not None:
            try:
                key, entry = self.cache.find(run.module)
            except OSError as err:
                raise InvalidArgument(f"{run.name}: cannot read {run.argv[0]}: {err.strerror}") from err
            try:
                staged = self.cache.staging(uuid.uuid4().hex)
            except OSError as err:
                log.warning("%s: compiled-module cache %s unusable: %s", run.name, self.cache.directory, err)
                staged = ""
            run = run._replace(cache_entry=entry or "", cache_store=staged)
        run.save(spec_path)
        name = run.name
        runner = await self.forkserver.take()
        stored = False
        try:
            if container.cgroup:
                Cgroup.open(container.cgroup).add_pid(runner.pid)
            reply = await runner.configure(name, spec_path)
            stored = reply.stored
        except BaseException:
            await runner.abandon()
            raise
        finally:
            if self.cache is not None and run.cache_store:
                if stored:
                    self.cache.adopt(key, run.cache_store)
                else:
                    self.cache.discard(run.cache_store)
        self.cache_counters.count(reply.compiled, reply.load_ms / 1000)
        log.debug("%s: module %s in %s ms by runner pid %d", name,
                  "compiled" if reply.compiled else "loaded from the cache", reply.load_ms, runner.pid)
        return runner

    def _track(self, container: Container, proc: Proc, runner: Runner) -> None:
        """``runner`` is ``proc`` from now on: its pid is recorded and its exit watched."""
        proc.pid, proc.start_time = runner.pid, runner.start_time()
        self._watch_child(container, proc)

    async def _open_io(self, container: Container, proc: Proc, name: str) -> ProcessIO:
        pio = await open_process_io(proc.stdio_value(), self.hub, name=name.replace("/", "-"))
        self._io[(container.id, proc.exec_id)] = pio
        return pio

    @staticmethod
    def _start_runner(runner: Runner, pio: ProcessIO) -> None:
        """Hand the runner its stdio and let the module run."""
        try:
            runner.start(StdioFds(stdin=pio.stdin, stdout=pio.stdout, stderr=pio.stderr))
        finally:
            pio.child_started()

    # -- Task API --------------------------------------------------------------------------------
    async def create(self, req: CreateTask) -> int:
        async with self._creating(req) as namespace:
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
                await self._open_io(container, container.init, req.id)  # a bad FIFO path fails Create
                runner = await self._launch(container, container.init, run)
            except BaseException:
                pio = self._io.pop((req.id, ""), None)
                if pio is not None:
                    await pio.close()
                self._release(container)
                raise
            self._track(container, container.init, runner)
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
        self._unmount_rootfs(container)
        self.store.remove(container.id)

    async def start(self, id: str, exec_id: str) -> int:
        async with self._lock(id):
            container, proc = self._startable(id, exec_id)
            if exec_id:
                if container.init.status is not TaskStatus.RUNNING:
                    raise FailedPrecondition(f"container {id} is not running; cannot start exec {exec_id}")
                run = build_run_spec(f"{id}/{exec_id}", proc.spec or {}, container.rootfs,
                                     self._spec_mounts(container), False, 0)
                # stdio is opened last, after the module loaded: see _launch
                runner = await self._launch(container, proc, run)
                try:
                    pio = await self._open_io(container, proc, run.name)
                except BaseException:
                    await runner.abandon()
                    raise
                # recorded before it is told to start, so that a successor finds it whichever side
                # of the start message this server dies on (see _was_started)
                self._track(container, proc, runner)
                self.store.save(container)
            else:
                pending = self._pending.pop((id, ""), None)
                init_io = self._io.get((id, ""))
                if pending is None or init_io is None:
                    raise FailedPrecondition(f"container {id} cannot start: its runner is gone "
                                             f"(the task server restarted before Start)")
                runner, pio = pending, init_io
            self._start_runner(runner, pio)
            proc.status = TaskStatus.RUNNING
            self.store.save(container)
            return proc.pid

    def _spec_mounts(self, container: Container) -> list[Any]:
        try:
            return list(load_spec(container.bundle).get("mounts") or [])
        except KuasarError:
            return []

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

    async def _remove(self, container: Container) -> None:
        """Kill what still runs of the container, release its resources and forget it."""
        pending = self._drop_pending(container.id, "")
        if pending is not None:
            container.init.signal = signals.SIGKILL
            kill(pending.pid)
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

    def metric_collectors(self) -> list["Collector"]:
        """The compiled-module cache series (see :mod:`kuasar_wasm_sandboxer.metrics`)."""
        from kuasar_wasm_sandboxer.metrics import CacheCollector

        return [CacheCollector(self.cache_counters)]

    async def update(self, id: str, resources: dict[str, Any], annotations: dict[str, str]) -> None:
        """New cgroup limits; a running module keeps the store memory limit it started with."""
        container = self._get(id)
        if not container.cgroup:
            raise FailedPrecondition(f"container {id} has no cgroup to update")
        try:
            Cgroup.open(container.cgroup).set_resources(resources)
        except OSError as err:
            raise FailedPrecondition(f"container {id}: cannot apply resources: {err}") from err

    async def _kill_all(self, container: Container) -> None:
        for proc in container.procs():
            if proc.status is not TaskStatus.STOPPED and is_same_process(proc.pid, proc.start_time):
                proc.signal = signals.SIGKILL
                kill(proc.pid)

    async def _await_killed(self, container: Container) -> None:
        for proc in container.procs():
            if proc.pid and proc.status is not TaskStatus.STOPPED:
                await self._await_exit(proc)

    def _readopt(self, container: Container, proc: Proc, alive: bool) -> None:
        if proc.status is TaskStatus.CREATED:
            if self._was_started(container, proc):  # the old server died right after telling it to start
                proc.status = TaskStatus.RUNNING
                alive = is_same_process(proc.pid, proc.start_time)
            else:  # never started: its control socket died with the old server
                if is_same_process(proc.pid, proc.start_time):
                    kill(proc.pid)
                if proc.exec_id:  # a Start settled by the new server runs it in a new runner
                    proc.pid, proc.start_time = 0, None
                else:
                    proc.exited(self._lost_status(proc), utc_now())
                return
        if alive:
            self._adopt(container, proc)
        else:  # it ended while no task server ran: the sandboxer recorded how
            self._own(self._adopted_exit(container, proc))

    def _was_started(self, container: Container, proc: Proc) -> bool:
        """Whether the runner of a process recorded as created got its ``start`` from the dead server.

        A started runner removes its run spec before the module runs; one that was not sees its
        control socket close and exits. Either happens at once, so this waits (bounded: recovery runs
        before serving) until the spec is gone or the runner is; a runner doing neither is not started.
        """
        spec_path = self.store.run_spec_path(container.id, proc.exec_id)
        deadline = time.monotonic() + self.start_verdict_timeout
        while os.path.exists(spec_path):
            if not is_same_process(proc.pid, proc.start_time) or time.monotonic() > deadline:
                return not os.path.exists(spec_path)
            time.sleep(0.01)
        return True

    async def interrupted_start(self, id: str, exec_id: str) -> Optional[int]:
        """A Start the dead server left unanswered: started when recovery found its runner started
        (the spec trace, see :meth:`_was_started`), else None and it is started again."""
        async with self._lock(id):
            proc = self._get(id).proc(exec_id)
            return proc.pid if proc.status is not TaskStatus.CREATED else None

    async def close(self) -> None:
        """Stop watching and copying; running modules keep running (FIFO output keeps flowing)."""
        for container_id, exec_id in list(self._pending):
            self._drop_pending(container_id, exec_id)
        await super().close()
        await self.forkserver.close()
