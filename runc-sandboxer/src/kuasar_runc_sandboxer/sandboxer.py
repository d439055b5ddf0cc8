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

import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.oci import is_same_process, kill, start_time, wait_exit
from kuasar_shared.sandbox import CreateSandbox, SandboxStatus
from kuasar_shared.sandbox.base import PodSandboxer
from kuasar_shared.sandbox.pods import PodRecord, PodState, parse_time
from kuasar_shared.sandbox.taskserver import TaskServer, find_command

from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.nsfiles import bind_namespaces, namespaces_match, unbind_namespaces

__all__ = ["RuncSandboxer", "Pod", "PodState", "RUNC_TASK"]

log = logging.getLogger(__name__)

#: how to start the runc task server (see kuasar_shared.sandbox.taskserver)
RUNC_TASK = find_command("runc-task", "kuasar_runc_task.main")


@dataclass
class Pod(PodRecord):
    """The persisted record of one runc pod (``sandbox.json``)."""

    hostname: str = ""
    shared_pid: bool = False
    pid: int = 0
    holder_start: Optional[int] = None
    ns_types: list[str] = field(default_factory=list)


class RuncSandboxer(PodSandboxer[Pod]):
    """Serves every runc pod of one ``--dir``.

    Resource handling: owns the task-server handle and the pidfd watches, released by
    :meth:`close` (pods, holders and the task server keep running); the holder helper stays the
    caller's.
    """

    task_server: TaskServer

    def __init__(self, directory: str, holders: HolderParent, task_server: TaskServer) -> None:
        super().__init__(directory, Pod, task_server)
        self.holders = holders

    def _status(self, pod: Pod) -> SandboxStatus:
        return SandboxStatus(id=pod.id, ready=pod.state is PodState.READY, pid=pod.pid,
                             created_at=parse_time(pod.created_at), exited_at=parse_time(pod.exited_at),
                             address=self.task_server.address,
                             info={"netns": pod.netns, "shared_pid": str(pod.shared_pid).lower()},
                             tasks=pod.task_resources)

    async def create(self, req: CreateSandbox) -> None:
        if req.netns_path and not os.path.exists(req.netns_path):
            raise InvalidArgument(f"sandbox {req.id}: network namespace {req.netns_path} does not exist")
        if req.host_pid:
            raise InvalidArgument(f"sandbox {req.id}: the host PID namespace (pid: NODE) is not supported")
        created = (req.created_at or datetime.now(timezone.utc)).isoformat()
        self.pods.add(Pod(id=req.id, netns=req.netns_path, hostname=req.hostname, shared_pid=req.shared_pid,
                          cgroup_parent=req.cgroup_parent, created_at=created))
        log.info("sandbox %s created (netns %s, shared pid %s)", req.id, req.netns_path or "host",
                 req.shared_pid)

    async def _start_pod(self, pod: Pod) -> None:
        if pod.cgroup_parent:
            self.pods.create_cgroup(pod)
            self.pods.save(pod)
        pid = await self.holders.spawn(pod.id, pod.netns, pod.hostname)
        types = ["uts", "ipc", "net"] + (["pid"] if pod.shared_pid else [])
        try:
            bind_namespaces(self.pods.pod_dir(pod.id), pid, types)
        except KuasarError as err:
            kill(pid)
            unbind_namespaces(self.pods.pod_dir(pod.id))
            raise InvalidArgument(f"sandbox {pod.id}: cannot pin its namespaces: {err}") from err
        pod.pid, pod.holder_start, pod.ns_types = pid, start_time(pid), types
        self._watch(pod.id, pid, "holder")
        log.info("sandbox %s ready, holder pid %d", pod.id, pid)

    async def _stop_pod(self, pod: Pod) -> None:
        if is_same_process(pod.pid, pod.holder_start):
            kill(pod.pid)
            await wait_exit(pod.pid)

    async def _readopt(self, pod: Pod) -> bool:
        if pod.state is not PodState.READY:
            return True
        if not (is_same_process(pod.pid, pod.holder_start)
                and namespaces_match(self.pods.pod_dir(pod.id), pod.pid, pod.ns_types)):
            log.error("sandbox %s: holder pid %d is gone or not the pod's; cleaning up", pod.id, pod.pid)
            if is_same_process(pod.pid, pod.holder_start):
                kill(pod.pid)
            await self._discard(pod)
            return False
        self._watch(pod.id, pod.pid, "holder")
        return True
