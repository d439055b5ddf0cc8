"""RuncSandboxer: runc pods as namespace holders, containers run by the separate runc-task server.

A pod is one holder process (see :mod:`.holder`) owning the pod's IPC, UTS and PID namespaces and
sitting in its network namespace (or the host's for hostNetwork pods). Start pins those namespaces
under ``<dir>/<id>/ns/`` and reports the holder's pid, so the ``/proc/<pid>/ns/...`` paths that
containerd writes into container specs resolve to the pod (runc-task also rewrites ``/proc/0/ns``
paths to the pinned files). Every change is saved to ``<dir>/<id>/sandbox.json``; after a restart
a pod whose holder is alive with the pinned namespaces is Ready again, any other pod is cleaned up
and forgotten (NOT_FOUND). Holder exits are watched with pidfds: no task per idle pod.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Optional

from kuasar_shared.cgroups import DEFAULT_ROOT, Cgroup, CgroupV2
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KuasarError, NotFound
from kuasar_shared.oci import ExitWatch, is_same_process, kill, start_time, wait_exit
from kuasar_shared.sandbox import (CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff,
                                   TaskResources, encode_tasks, parse_tasks)
from kuasar_shared.sandbox.taskserver import TaskServer, find_command
from kuasar_shared.store import CorruptState, PodStore
from kuasar_shared.task.backend import CgroupStats

from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.nsfiles import bind_namespaces, namespaces_match, unbind_namespaces

__all__ = ["RuncSandboxer", "PodState", "RUNC_TASK"]

log = logging.getLogger(__name__)

#: how to start the runc task server (see kuasar_shared.sandbox.taskserver)
RUNC_TASK = find_command("runc-task", "kuasar_runc_task.main")
#: status reported when a holder died without being stopped (its status is not ours to reap)
UNEXPECTED_EXIT = 255


class PodState(str, enum.Enum):
    CREATED = "created"
    READY = "ready"
    STOPPED = "stopped"


@dataclass
class Pod:
    """The persisted record of one pod (``sandbox.json``)."""

    id: str
    state: PodState = PodState.CREATED
    netns: str = ""
    hostname: str = ""
    shared_pid: bool = False
    cgroup_parent: str = ""
    #: how many trailing levels of ``cgroup_parent`` this sandboxer created (removed at shutdown)
    cgroup_owned_depth: int = 0
    pid: int = 0
    holder_start: Optional[int] = None
    created_at: str = ""
    exited_at: str = ""
    exit_status: int = 0
    ns_types: list[str] = field(default_factory=list)
    #: the accepted ``extensions.tasks`` list (JSON); runc-task takes everything from task Create
    tasks: str = ""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Pod":
        pod = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        pod.state = PodState(pod.state)
        return pod


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _time(value: str) -> Optional[datetime]:
    return datetime.fromisoformat(value) if value else None


class RuncSandboxer(Sandboxer):
    """Serves every runc pod of one ``--dir``.

    Resource handling: owns the task-server handle and the pidfd watches, released by
    :meth:`close` (pods, holders and the task server keep running); the holder helper stays the
    caller's.
    """

    def __init__(self, directory: str, holders: HolderParent, task_server: TaskServer) -> None:
        self.directory = directory
        self.store = PodStore(directory)
        self.holders = holders
        self.task_server = task_server
        self._pods: dict[str, Pod] = {}
        self._watches: dict[str, ExitWatch] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _pod(self, sandbox_id: str) -> Pod:
        try:
            return self._pods[sandbox_id]
        except KeyError:
            raise NotFound(f"sandbox {sandbox_id} not found") from None

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _event(self, sandbox_id: str) -> asyncio.Event:
        return self._exited.setdefault(sandbox_id, asyncio.Event())

    def _save(self, pod: Pod) -> None:
        self.store.save(pod.id, pod.to_json())

    def _status(self, pod: Pod) -> SandboxStatus:
        return SandboxStatus(id=pod.id, ready=pod.state is PodState.READY, pid=pod.pid,
                             created_at=_time(pod.created_at), exited_at=_time(pod.exited_at),
                             address=self.task_server.address,
                             info={"netns": pod.netns, "shared_pid": str(pod.shared_pid).lower()},
                             tasks=parse_tasks(pod.tasks.encode()) if pod.tasks else TaskResources())

    async def create(self, req: CreateSandbox) -> None:
        if req.id in self._pods:
            raise AlreadyExists(f"sandbox {req.id} already exists")
        if req.netns_path and not os.path.exists(req.netns_path):
            raise InvalidArgument(f"sandbox {req.id}: network namespace {req.netns_path} does not exist")
        if req.host_pid:
            raise InvalidArgument(f"sandbox {req.id}: the host PID namespace (pid: NODE) is not supported")
        created = (req.created_at or datetime.now(timezone.utc)).isoformat()
        pod = Pod(id=req.id, netns=req.netns_path, hostname=req.hostname, shared_pid=req.shared_pid,
                  cgroup_parent=req.cgroup_parent, created_at=created)
        try:
            self._save(pod)
        except OSError:
            shutil.rmtree(self.store.pod_dir(req.id), ignore_errors=True)
            raise
        self._pods[req.id] = pod
        log.info("sandbox %s created (netns %s, shared pid %s)", req.id, req.netns_path or "host",
                 req.shared_pid)

    async def start(self, id: str) -> SandboxStatus:
        async with self._lock(id):
            pod = self._pod(id)
            if pod.state is not PodState.CREATED:
                raise FailedPrecondition(f"sandbox {id} cannot start: it is {pod.state.value}, not created")
            if pod.cgroup_parent:
                cgroup = Cgroup.open(pod.cgroup_parent)
                try:
                    cgroup.create()
                except OSError as err:
                    raise InvalidArgument(f"sandbox {id}: cannot create cgroup {pod.cgroup_parent}: "
                                          f"{err}") from err
                pod.cgroup_owned_depth = cgroup.owned_depth
                self._save(pod)
            pid = await self.holders.spawn(id, pod.netns, pod.hostname)
            types = ["uts", "ipc", "net"] + (["pid"] if pod.shared_pid else [])
            try:
                bind_namespaces(self.store.pod_dir(id), pid, types)
            except KuasarError as err:
                kill(pid)
                unbind_namespaces(self.store.pod_dir(id))
                raise InvalidArgument(f"sandbox {id}: cannot pin its namespaces: {err}") from err
            pod.pid, pod.holder_start, pod.ns_types = pid, start_time(pid), types
            pod.state = PodState.READY
            self._save(pod)
            self._watch(pod)
            log.info("sandbox %s ready, holder pid %d", id, pid)
            return self._status(pod)

    def _watch(self, pod: Pod) -> None:
        self._event(pod.id).clear()
        self._watches[pod.id] = ExitWatch(pod.pid, lambda: self._on_holder_exit(pod.id))

    def _on_holder_exit(self, sandbox_id: str) -> None:
        self._watches.pop(sandbox_id, None)
        pod = self._pods.get(sandbox_id)
        if pod is None:
            return
        if pod.state is PodState.READY:
            log.warning("sandbox %s: holder pid %d exited unexpectedly", sandbox_id, pod.pid)
            pod.state, pod.exited_at, pod.exit_status = PodState.STOPPED, _now(), UNEXPECTED_EXIT
            self._save(pod)
        self._event(sandbox_id).set()

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self._lock(id):
            pod = self._pod(id)
            await self._stop(pod)

    async def _stop(self, pod: Pod) -> None:
        if pod.state is PodState.READY:
            try:
                await self.task_server.shutdown_pod(pod.id, now=False)
            except KuasarError as err:
                log.warning("sandbox %s: task server could not stop its containers: %s", pod.id, err)
            watch = self._watches.pop(pod.id, None)
            if watch is not None:
                watch.cancel()
            if is_same_process(pod.pid, pod.holder_start):
                kill(pod.pid)
                await wait_exit(pod.pid)
            pod.state, pod.exited_at, pod.exit_status = PodState.STOPPED, _now(), 0
            self._save(pod)
            log.info("sandbox %s stopped", pod.id)
        elif pod.state is PodState.CREATED:
            pod.state, pod.exited_at = PodState.STOPPED, _now()
            self._save(pod)
        self._event(pod.id).set()

    async def wait(self, id: str) -> ExitStatus:
        pod = self._pod(id)
        if pod.state is not PodState.STOPPED:
            await self._event(id).wait()
            pod = self._pod(id)
        return ExitStatus(exit_status=pod.exit_status, exited_at=_time(pod.exited_at))

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        return self._status(self._pod(id))

    async def shutdown(self, id: str) -> None:
        async with self._lock(id):
            pod = self._pod(id)
            await self._stop(pod)
            try:
                await self.task_server.shutdown_pod(id, now=True)
            except KuasarError as err:
                log.warning("sandbox %s: task server could not remove its containers: %s", id, err)
            self._remove(pod)
            self._exited.pop(id, None)
        self._locks.pop(id, None)
        log.info("sandbox %s removed", id)

    def _remove(self, pod: Pod) -> None:
        """Forget a stopped pod and remove its mounts, cgroup and directory."""
        self._pods.pop(pod.id, None)
        if pod.cgroup_parent:
            _remove_cgroup(pod)
        try:
            self.store.remove(pod.id)
        except KuasarError as err:
            log.error("sandbox %s: cannot remove %s: %s", pod.id, self.store.pod_dir(pod.id), err)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        async with self._lock(id):
            pod = self._pod(id)
            pod.tasks = encode_tasks(diff.new).decode()
            self._save(pod)

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        pod = self._pod(id)
        if not pod.cgroup_parent:
            return None
        try:
            return Cgroup.open(pod.cgroup_parent).stats()
        except NotFound:
            return None

    async def recover(self) -> None:
        for sandbox_id in self.store.ids():
            try:
                pod = Pod.from_json(self.store.load(sandbox_id))
            except (CorruptState, NotFound, TypeError, ValueError) as err:
                log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, err)
                self._remove(Pod(id=sandbox_id))
                continue
            if pod.state is PodState.READY:
                pod_dir = self.store.pod_dir(pod.id)
                if not (is_same_process(pod.pid, pod.holder_start)
                        and namespaces_match(pod_dir, pod.pid, pod.ns_types)):
                    log.error("sandbox %s: holder pid %d is gone or not the pod's; cleaning up",
                              pod.id, pod.pid)
                    if is_same_process(pod.pid, pod.holder_start):
                        kill(pod.pid)
                    try:
                        await self.task_server.shutdown_pod(pod.id, now=True)
                    except KuasarError as err:
                        log.warning("sandbox %s: task server clean-up failed: %s", pod.id, err)
                    self._remove(pod)
                    continue
                self._pods[pod.id] = pod
                self._watch(pod)
            else:
                self._pods[pod.id] = pod
                if pod.state is PodState.STOPPED:
                    self._event(pod.id).set()
            log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)

    async def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
        await self.task_server.close()


def _remove_cgroup(pod: Pod) -> None:
    """Remove the pod's cgroup; on a hybrid v1 host also the copy runc makes in the unified tree."""
    cgroups = [Cgroup.open(pod.cgroup_parent, owned_depth=pod.cgroup_owned_depth)]
    unified = os.path.join(DEFAULT_ROOT, "unified")
    if cgroups[0].version == "v1" and os.path.isdir(unified):
        cgroups.append(CgroupV2(pod.cgroup_parent, root=unified, owned_depth=pod.cgroup_owned_depth))
    for cgroup in cgroups:
        try:
            cgroup.delete()
        except (OSError, KuasarError) as err:
            log.warning("sandbox %s: cannot remove cgroup %r: %s", pod.id, cgroup, err)
