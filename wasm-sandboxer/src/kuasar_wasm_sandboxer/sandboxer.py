"""WasmSandboxer: wasm pods are a record plus a cgroup; their containers run in the wasm-task server.

A wasm module has no Linux namespaces to share (WASI preview 1 gives it no network, no IPC, no
hostname, no process list), so unlike runc no namespace holder process is needed: a pod is its
``sandbox.json`` and its cgroup (``cgroup_parent`` from the pod config, else
``kuasar-wasm/<pod id>``), under which the task server puts each container's cgroup. The recorded
``cgroup_parent`` is what the task server reads (:mod:`kuasar_shared.oci.pod`). The pod's pid is
the task server's. Nothing per pod runs here, so recovery after a restart only reads the records:
a Ready pod stays Ready; a record that cannot be read is cleaned up (its containers killed and
deleted through the task server, its cgroup removed) and the pod is NOT_FOUND.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KuasarError, NotFound
from kuasar_shared.sandbox import (CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff,
                                   TaskResources, encode_tasks, parse_tasks)
from kuasar_shared.sandbox.taskserver import TaskServer, find_command
from kuasar_shared.store import CorruptState, PodStore
from kuasar_shared.task.backend import CgroupStats

__all__ = ["WasmSandboxer", "PodState", "WASM_TASK", "DEFAULT_CGROUP_ROOT"]

log = logging.getLogger(__name__)

#: how to start the wasm task server (see kuasar_shared.sandbox.taskserver)
WASM_TASK = find_command("wasm-task", "kuasar_wasm_sandboxer.task")
#: parent of the cgroups of pods whose config names no cgroup_parent
DEFAULT_CGROUP_ROOT = "kuasar-wasm"


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
    #: the pod's cgroup (the config's cgroup_parent, else kuasar-wasm/<id>)
    cgroup_parent: str = ""
    cgroup_owned_depth: int = 0
    created_at: str = ""
    exited_at: str = ""
    exit_status: int = 0
    #: the accepted ``extensions.tasks`` list (JSON); wasm-task takes everything from task Create
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


class WasmSandboxer(Sandboxer):
    """Serves every wasm pod of one ``--dir``.

    Resource handling: owns the task-server handle, released by :meth:`close` (the task server and
    the running modules keep running).
    """

    def __init__(self, directory: str, task_server: TaskServer) -> None:
        self.directory = directory
        self.store = PodStore(directory)
        self.task_server = task_server
        self._pods: dict[str, Pod] = {}
        self._stopped: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _pod(self, sandbox_id: str) -> Pod:
        try:
            return self._pods[sandbox_id]
        except KeyError:
            raise NotFound(f"sandbox {sandbox_id} not found") from None

    def _lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def _event(self, sandbox_id: str) -> asyncio.Event:
        return self._stopped.setdefault(sandbox_id, asyncio.Event())

    def _save(self, pod: Pod) -> None:
        self.store.save(pod.id, pod.to_json())

    def _status(self, pod: Pod) -> SandboxStatus:
        return SandboxStatus(id=pod.id, ready=pod.state is PodState.READY,
                             pid=self.task_server.pid if pod.state is PodState.READY else 0,
                             created_at=_time(pod.created_at), exited_at=_time(pod.exited_at),
                             address=self.task_server.address,
                             info={"netns": pod.netns, "cgroup": pod.cgroup_parent},
                             tasks=parse_tasks(pod.tasks.encode()) if pod.tasks else TaskResources())

    async def create(self, req: CreateSandbox) -> None:
        if req.id in self._pods:
            raise AlreadyExists(f"sandbox {req.id} already exists")
        cgroup_parent = req.cgroup_parent or f"{DEFAULT_CGROUP_ROOT}/{req.id}"
        try:
            Cgroup.open(cgroup_parent)
        except InvalidArgument as err:
            raise InvalidArgument(f"sandbox {req.id}: {err}") from err
        created = (req.created_at or datetime.now(timezone.utc)).isoformat()
        pod = Pod(id=req.id, netns=req.netns_path, cgroup_parent=cgroup_parent, created_at=created)
        try:
            self._save(pod)
        except OSError:
            shutil.rmtree(self.store.pod_dir(req.id), ignore_errors=True)
            raise
        self._pods[req.id] = pod
        log.info("sandbox %s created (cgroup %s)", req.id, cgroup_parent)

    async def start(self, id: str) -> SandboxStatus:
        async with self._lock(id):
            pod = self._pod(id)
            if pod.state is not PodState.CREATED:
                raise FailedPrecondition(f"sandbox {id} cannot start: it is {pod.state.value}, not created")
            cgroup = Cgroup.open(pod.cgroup_parent)
            try:
                cgroup.create()
            except OSError as err:
                raise InvalidArgument(f"sandbox {id}: cannot create cgroup {pod.cgroup_parent}: {err}") from err
            pod.cgroup_owned_depth = cgroup.owned_depth
            pod.state = PodState.READY
            self._event(id).clear()
            self._save(pod)
            log.info("sandbox %s ready", id)
            return self._status(pod)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self._lock(id):
            await self._stop(self._pod(id))

    async def _stop(self, pod: Pod) -> None:
        if pod.state is PodState.READY:
            try:
                await self.task_server.shutdown_pod(pod.id, now=False)
            except KuasarError as err:
                log.warning("sandbox %s: task server could not stop its containers: %s", pod.id, err)
            log.info("sandbox %s stopped", pod.id)
        if pod.state is not PodState.STOPPED:
            pod.state, pod.exited_at, pod.exit_status = PodState.STOPPED, _now(), 0
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
            await self._remove(pod)
            self._stopped.pop(id, None)
        self._locks.pop(id, None)
        log.info("sandbox %s removed", id)

    async def _remove(self, pod: Pod) -> None:
        """Delete the pod's containers (task server), its cgroup and its directory; forget it."""
        try:
            await self.task_server.shutdown_pod(pod.id, now=True)
        except KuasarError as err:
            log.warning("sandbox %s: task server could not remove its containers: %s", pod.id, err)
        self._pods.pop(pod.id, None)
        if pod.cgroup_parent:
            try:
                Cgroup.open(pod.cgroup_parent, owned_depth=pod.cgroup_owned_depth).delete()
            except (OSError, KuasarError) as err:
                log.warning("sandbox %s: cannot remove cgroup %s: %s", pod.id, pod.cgroup_parent, err)
            if pod.cgroup_parent.startswith(DEFAULT_CGROUP_ROOT + "/"):
                _remove_if_empty(DEFAULT_CGROUP_ROOT)
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
        try:
            return Cgroup.open(pod.cgroup_parent).stats()
        except (NotFound, InvalidArgument):
            return None

    async def recover(self) -> None:
        for sandbox_id in self.store.ids():
            try:
                pod = Pod.from_json(self.store.load(sandbox_id))
                if pod.id != sandbox_id:
                    raise ValueError(f"record names pod {pod.id!r}")
            except (CorruptState, NotFound, TypeError, ValueError) as err:
                log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, err)
                # the default cgroup is the only one we can still name
                await self._remove(Pod(id=sandbox_id, cgroup_parent=f"{DEFAULT_CGROUP_ROOT}/{sandbox_id}",
                                       cgroup_owned_depth=1))
                continue
            self._pods[pod.id] = pod
            if pod.state is PodState.STOPPED:
                self._event(pod.id).set()
            log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)

    async def close(self) -> None:
        await self.task_server.close()


def _remove_if_empty(path: str) -> None:
    """rmdir the shared default cgroup root in every hierarchy; the kernel refuses while a pod uses it."""
    for directory in Cgroup.open(path).dirs().values():
        try:
            os.rmdir(directory)
        except OSError:
            continue
