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
from typing import Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.sandbox import CreateSandbox, SandboxStatus
from kuasar_shared.sandbox.lifecycle import PodSandboxer
from kuasar_shared.sandbox.pods import PodRecord, PodState, check_create, parse_time
from kuasar_shared.sandbox.task_supervisor import TaskProgram, TaskServer
from kuasar_shared.values import CgroupStats

__all__ = ["WasmSandboxer", "Pod", "PodState", "WASM_TASK", "WASM_TASK_PROGRAM", "DEFAULT_CGROUP_ROOT"]

log = logging.getLogger(__name__)

#: the wasm task server's program (see kuasar_shared.sandbox.task_supervisor)
WASM_TASK_PROGRAM = TaskProgram.find("wasm-task", "kuasar_wasm_sandboxer.task")
#: how to start it
WASM_TASK = list(WASM_TASK_PROGRAM.command)
#: parent of the cgroups of pods whose config names no cgroup_parent
DEFAULT_CGROUP_ROOT = "kuasar-wasm"


class Pod(PodRecord):
    """The persisted record of one wasm pod: ``cgroup_parent`` is the config's, else kuasar-wasm/<id>."""


class WasmSandboxer(PodSandboxer[Pod]):
    """Serves every wasm pod of one ``--dir``.

    Resource handling: owns the task-server handle, released by :meth:`close` (the task server and
    the running modules keep running).
    """

    task_server: TaskServer

    def __init__(self, directory: str, task_server: TaskServer) -> None:
        super().__init__(directory, Pod, task_server)

    def _status(self, pod: Pod) -> SandboxStatus:
        ready = pod.state is PodState.READY
        return SandboxStatus(id=pod.id, ready=ready, pid=self.task_server.pid if ready else 0,
                             created_at=parse_time(pod.created_at), exited_at=parse_time(pod.exited_at),
                             address=self.task_server.address,
                             info={"netns": pod.netns, "cgroup": pod.cgroup_parent},
                             tasks=pod.task_resources)

    async def create(self, req: CreateSandbox) -> None:
        created = check_create(req)
        cgroup_parent = req.cgroup_parent or f"{DEFAULT_CGROUP_ROOT}/{req.id}"
        try:
            Cgroup.open(cgroup_parent)
        except InvalidArgument as err:
            raise InvalidArgument(f"sandbox {req.id}: {err}") from err
        self.pods.add(Pod(id=req.id, netns=req.netns_path, cgroup_parent=cgroup_parent, created_at=created))
        log.info("sandbox %s created (cgroup %s)", req.id, cgroup_parent)

    async def _start_pod(self, pod: Pod) -> None:
        self.pods.create_cgroup(pod)
        log.info("sandbox %s ready", pod.id)

    async def _remove(self, pod: Pod) -> None:
        """Delete the pod's cgroup and its directory; forget it."""
        self.pods.remove(pod)
        if pod.cgroup_parent.startswith(DEFAULT_CGROUP_ROOT + "/"):
            _remove_if_empty(DEFAULT_CGROUP_ROOT)

    async def _drop_unreadable(self, sandbox_id: str) -> None:
        # the default cgroup is the only one we can still name
        await self._discard(Pod(id=sandbox_id, cgroup_parent=f"{DEFAULT_CGROUP_ROOT}/{sandbox_id}",
                                cgroup_owned_depth=1))

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        try:
            return self.pods.metrics(id)
        except InvalidArgument:
            return None


def _remove_if_empty(path: str) -> None:
    """rmdir the shared default cgroup root in every hierarchy; the kernel refuses while a pod uses it."""
    for directory in Cgroup.open(path).dirs().values():
        try:
            os.rmdir(directory)
        except OSError:
            continue
