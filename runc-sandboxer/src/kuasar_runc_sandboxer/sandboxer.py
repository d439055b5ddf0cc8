"""RuncSandboxer: runc pods as namespace holders, containers run by the separate runc-task server.

A pod is one holder process (see :mod:`.holder`) owning the pod's UTS, IPC and PID namespaces (the
node's IPC or PID namespace for hostIPC / hostPID pods), sitting in its network namespace (or the
host's for hostNetwork pods) and having set the pod's sysctls there. Create writes the pod's
``hostname``, ``hosts`` and ``resolv.conf`` and Start mounts its ``/dev/shm`` (see
:mod:`kuasar_shared.sandbox.podfiles`; runc-task mounts them into containers). Start pins the namespaces
under ``<dir>/<id>/ns/`` and reports the holder's pid, so the ``/proc/<pid>/ns/...`` paths that
containerd writes into container specs resolve to the pod (runc-task also rewrites ``/proc/0/ns``
paths to the pinned files). Every change is saved to ``<dir>/<id>/sandbox.json``; after a restart
a pod whose holder is alive with the pinned namespaces is Ready again, any other pod is cleaned up
and forgotten (NOT_FOUND). Holder exits are watched with pidfds: no task per idle pod.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from kuasar_shared import tracing
from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.process_identity import is_same_process, kill, start_time, wait_exit
from kuasar_shared.sandbox import CreateSandbox, SandboxStatus
from kuasar_shared.mounts import MountError
from kuasar_shared.sandbox.lifecycle import PodSandboxer
from kuasar_shared.sandbox.podfiles import mount_pod_shm, unmount_pod_shm, write_pod_files
from kuasar_shared.sandbox.pods import PodRecord, PodState, check_create, parse_time
from kuasar_shared.sandbox.task_supervisor import TaskProgram, TaskServer

from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.nsfiles import bind_namespaces, namespaces_match, unbind_namespaces
from kuasar_runc_sandboxer.sysctls import sysctl_files

__all__ = ["RuncSandboxer", "Pod", "PodState", "RUNC_TASK", "RUNC_TASK_PROGRAM"]

log = logging.getLogger(__name__)

#: the runc task server's program (see kuasar_shared.sandbox.task_supervisor)
RUNC_TASK_PROGRAM = TaskProgram.find("runc-task", "kuasar_runc_task.main")
#: how to start it
RUNC_TASK = list(RUNC_TASK_PROGRAM.command)


@dataclass
class Pod(PodRecord):
    """The persisted record of one runc pod (``sandbox.json``)."""

    hostname: str = ""
    shared_pid: bool = False
    host_pid: bool = False
    host_ipc: bool = False
    #: /proc/sys file -> value, set by the holder
    sysctls: dict[str, str] = field(default_factory=dict)
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
        created = check_create(req)
        try:
            sysctls = sysctl_files(req.sysctls, req.host_network, req.host_ipc)
        except InvalidArgument as err:
            raise InvalidArgument(f"sandbox {req.id}: {err.message}") from err
        pod = Pod(id=req.id, netns=req.netns_path, hostname=req.hostname, shared_pid=req.shared_pid,
                  host_pid=req.host_pid, host_ipc=req.host_ipc, sysctls=sysctls,
                  cgroup_parent=req.cgroup_parent, created_at=created)
        self.pods.add(pod)
        try:
            write_pod_files(self.pods.pod_dir(req.id), req.hostname, req.dns_config)
        except InvalidArgument as err:
            self.pods.remove(pod)
            raise InvalidArgument(f"sandbox {req.id}: {err.message}") from err
        log.info("sandbox %s created (netns %s, shared pid %s, host pid %s, host ipc %s)", req.id,
                 req.netns_path or "host", req.shared_pid, req.host_pid, req.host_ipc)

    async def _start_pod(self, pod: Pod) -> None:
        if pod.cgroup_parent:
            self.pods.create_cgroup(pod)
            self.pods.save(pod)  # the cgroup is ours to remove
        if not pod.host_ipc:
            try:
                mount_pod_shm(self.pods.pod_dir(pod.id))
            except MountError as err:
                raise InvalidArgument(f"sandbox {pod.id}: cannot mount its /dev/shm: {err}") from err
        with tracing.span("holder spawn", sandbox_id=pod.id):
            pid = await self.holders.spawn(pod.id, pod.netns, pod.hostname, host_ipc=pod.host_ipc,
                                           host_pid=pod.host_pid, sysctls=pod.sysctls)
        types = ["uts"] + ([] if pod.host_ipc else ["ipc"]) + ["net"] + (["pid"] if pod.shared_pid else [])
        try:
            with tracing.span("namespace pinning", sandbox_id=pod.id, namespaces=",".join(types)):
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
        try:
            unmount_pod_shm(self.pods.pod_dir(pod.id))
        except (MountError, OSError) as err:
            log.warning("sandbox %s: cannot unmount its /dev/shm: %s", pod.id, err)

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
