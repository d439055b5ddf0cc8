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

import logging
import os
import shutil
from datetime import datetime, timezone
from typing import Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.sandbox import CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff
from kuasar_shared.sandbox.pods import PodRecord, PodState, PodTable, parse_time
from kuasar_shared.sandbox.taskserver import TaskServer, find_command
from kuasar_shared.task.backend import CgroupStats

__all__ = ["WasmSandboxer", "Pod", "PodState", "WASM_TASK", "DEFAULT_CGROUP_ROOT"]

log = logging.getLogger(__name__)

#: how to start the wasm task server (see kuasar_shared.sandbox.taskserver)
WASM_TASK = find_command("wasm-task", "kuasar_wasm_sandboxer.task")
#: parent of the cgroups of pods whose config names no cgroup_parent
DEFAULT_CGROUP_ROOT = "kuasar-wasm"


class Pod(PodRecord):
    """The persisted record of one wasm pod: ``cgroup_parent`` is the config's, else kuasar-wasm/<id>."""


class WasmSandboxer(Sandboxer):
    """Serves every wasm pod of one ``--dir``.

    Resource handling: owns the task-server handle, released by :meth:`close` (the task server and
    the running modules keep running).
    """

    def __init__(self, directory: str, task_server: TaskServer) -> None:
        self.directory = directory
        self.pods: PodTable[Pod] = PodTable(directory, Pod)
        self.task_server = task_server

    def _status(self, pod: Pod) -> SandboxStatus:
        ready = pod.state is PodState.READY
        return SandboxStatus(id=pod.id, ready=ready, pid=self.task_server.pid if ready else 0,
                             created_at=parse_time(pod.created_at), exited_at=parse_time(pod.exited_at),
                             address=self.task_server.address,
                             info={"netns": pod.netns, "cgroup": pod.cgroup_parent},
                             tasks=pod.task_resources)

    async def create(self, req: CreateSandbox) -> None:
        cgroup_parent = req.cgroup_parent or f"{DEFAULT_CGROUP_ROOT}/{req.id}"
        try:
            Cgroup.open(cgroup_parent)
        except InvalidArgument as err:
            raise InvalidArgument(f"sandbox {req.id}: {err}") from err
        created = (req.created_at or datetime.now(timezone.utc)).isoformat()
        pod = Pod(id=req.id, netns=req.netns_path, cgroup_parent=cgroup_parent, created_at=created)
        try:
            self.pods.add(pod)
        except OSError:
            shutil.rmtree(self.pods.pod_dir(req.id), ignore_errors=True)
            raise
        log.info("sandbox %s created (cgroup %s)", req.id, cgroup_parent)

    async def start(self, id: str) -> SandboxStatus:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            pod.require(PodState.CREATED, "start")
            cgroup = Cgroup.open(pod.cgroup_parent)
            try:
                cgroup.create()
            except OSError as err:
                raise InvalidArgument(f"sandbox {id}: cannot create cgroup {pod.cgroup_parent}: {err}") from err
            pod.cgroup_owned_depth = cgroup.owned_depth
            self.pods.running(pod)
            log.info("sandbox %s ready", id)
            return self._status(pod)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self.pods.lock(id):
            await self._stop(self.pods.get(id))

    async def _stop(self, pod: Pod) -> None:
        if pod.state is PodState.READY:
            try:
                await self.task_server.shutdown_pod(pod.id, now=False)
            except KuasarError as err:
                log.warning("sandbox %s: task server could not stop its containers: %s", pod.id, err)
            log.info("sandbox %s stopped", pod.id)
        self.pods.stopped(pod, 0)

    async def wait(self, id: str) -> ExitStatus:
        return await self.pods.wait(id)

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        return self._status(self.pods.get(id))

    async def shutdown(self, id: str) -> None:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            await self._stop(pod)
            await self._remove(pod)
        log.info("sandbox %s removed", id)

    async def _remove(self, pod: Pod) -> None:
        """Delete the pod's containers (task server), its cgroup and its directory; forget it."""
        try:
            await self.task_server.shutdown_pod(pod.id, now=True)
        except KuasarError as err:
            log.warning("sandbox %s: task server could not remove its containers: %s", pod.id, err)
        self.pods.remove(pod)
        if pod.cgroup_parent.startswith(DEFAULT_CGROUP_ROOT + "/"):
            _remove_if_empty(DEFAULT_CGROUP_ROOT)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        await self.pods.update_tasks(id, diff)

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        try:
            return self.pods.metrics(id)
        except InvalidArgument:
            return None

    async def recover(self) -> None:
        for sandbox_id, pod in self.pods.load_all():
            if not isinstance(pod, Pod):
                log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, pod)
                # the default cgroup is the only one we can still name
                await self._remove(Pod(id=sandbox_id, cgroup_parent=f"{DEFAULT_CGROUP_ROOT}/{sandbox_id}",
                                       cgroup_owned_depth=1))
                continue
            self.pods.adopt(pod)
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
