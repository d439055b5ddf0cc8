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
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.oci import ExitWatch, is_same_process, kill, start_time, wait_exit
from kuasar_shared.sandbox import CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff
from kuasar_shared.sandbox.pods import PodRecord, PodState, PodTable, parse_time
from kuasar_shared.sandbox.taskserver import TaskServer, find_command
from kuasar_shared.task.backend import CgroupStats

from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.nsfiles import bind_namespaces, namespaces_match, unbind_namespaces

__all__ = ["RuncSandboxer", "Pod", "PodState", "RUNC_TASK"]

log = logging.getLogger(__name__)

#: how to start the runc task server (see kuasar_shared.sandbox.taskserver)
RUNC_TASK = find_command("runc-task", "kuasar_runc_task.main")
#: status reported when a holder died without being stopped (its status is not ours to reap)
UNEXPECTED_EXIT = 255


@dataclass
class Pod(PodRecord):
    """The persisted record of one runc pod (``sandbox.json``)."""

    hostname: str = ""
    shared_pid: bool = False
    pid: int = 0
    holder_start: Optional[int] = None
    ns_types: list[str] = field(default_factory=list)


class RuncSandboxer(Sandboxer):
    """Serves every runc pod of one ``--dir``.

    Resource handling: owns the task-server handle and the pidfd watches, released by
    :meth:`close` (pods, holders and the task server keep running); the holder helper stays the
    caller's.
    """

    def __init__(self, directory: str, holders: HolderParent, task_server: TaskServer) -> None:
        self.directory = directory
        self.pods: PodTable[Pod] = PodTable(directory, Pod)
        self.holders = holders
        self.task_server = task_server
        self._watches: dict[str, ExitWatch] = {}

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
        pod = Pod(id=req.id, netns=req.netns_path, hostname=req.hostname, shared_pid=req.shared_pid,
                  cgroup_parent=req.cgroup_parent, created_at=created)
        try:
            self.pods.add(pod)
        except OSError:
            shutil.rmtree(self.pods.pod_dir(req.id), ignore_errors=True)
            raise
        log.info("sandbox %s created (netns %s, shared pid %s)", req.id, req.netns_path or "host",
                 req.shared_pid)

    async def start(self, id: str) -> SandboxStatus:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            pod.require(PodState.CREATED, "start")
            if pod.cgroup_parent:
                cgroup = Cgroup.open(pod.cgroup_parent)
                try:
                    cgroup.create()
                except OSError as err:
                    raise InvalidArgument(f"sandbox {id}: cannot create cgroup {pod.cgroup_parent}: "
                                          f"{err}") from err
                pod.cgroup_owned_depth = cgroup.owned_depth
                self.pods.save(pod)
            pid = await self.holders.spawn(id, pod.netns, pod.hostname)
            types = ["uts", "ipc", "net"] + (["pid"] if pod.shared_pid else [])
            try:
                bind_namespaces(self.pods.pod_dir(id), pid, types)
            except KuasarError as err:
                kill(pid)
                unbind_namespaces(self.pods.pod_dir(id))
                raise InvalidArgument(f"sandbox {id}: cannot pin its namespaces: {err}") from err
            pod.pid, pod.holder_start, pod.ns_types = pid, start_time(pid), types
            self.pods.running(pod)
            self._watch(pod)
            log.info("sandbox %s ready, holder pid %d", id, pid)
            return self._status(pod)

    def _watch(self, pod: Pod) -> None:
        self._watches[pod.id] = ExitWatch(pod.pid, lambda: self._on_holder_exit(pod.id))

    def _on_holder_exit(self, sandbox_id: str) -> None:
        self._watches.pop(sandbox_id, None)
        pod = self.pods.find(sandbox_id)
        if pod is None:
            return
        if pod.state is PodState.READY:
            log.warning("sandbox %s: holder pid %d exited unexpectedly", sandbox_id, pod.pid)
        self.pods.stopped(pod, UNEXPECTED_EXIT)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self.pods.lock(id):
            await self._stop(self.pods.get(id))

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
            self.pods.stopped(pod, 0)
            log.info("sandbox %s stopped", pod.id)
        else:
            self.pods.stopped(pod, pod.exit_status)

    async def wait(self, id: str) -> ExitStatus:
        return await self.pods.wait(id)

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        return self._status(self.pods.get(id))

    async def shutdown(self, id: str) -> None:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            await self._stop(pod)
            try:
                await self.task_server.shutdown_pod(id, now=True)
            except KuasarError as err:
                log.warning("sandbox %s: task server could not remove its containers: %s", id, err)
            self.pods.remove(pod)
        log.info("sandbox %s removed", id)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        await self.pods.update_tasks(id, diff)

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        return self.pods.metrics(id)

    async def recover(self) -> None:
        for sandbox_id, pod in self.pods.load_all():
            if not isinstance(pod, Pod):
                log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, pod)
                self.pods.remove(Pod(id=sandbox_id))
                continue
            if pod.state is PodState.READY:
                if not (is_same_process(pod.pid, pod.holder_start)
                        and namespaces_match(self.pods.pod_dir(pod.id), pod.pid, pod.ns_types)):
                    log.error("sandbox %s: holder pid %d is gone or not the pod's; cleaning up",
                              pod.id, pod.pid)
                    if is_same_process(pod.pid, pod.holder_start):
                        kill(pod.pid)
                    try:
                        await self.task_server.shutdown_pod(pod.id, now=True)
                    except KuasarError as err:
                        log.warning("sandbox %s: task server clean-up failed: %s", pod.id, err)
                    self.pods.remove(pod)
                    continue
                self._watch(pod)
            self.pods.adopt(pod)
            log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)

    async def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
        await self.task_server.close()
