"""QuarkSandboxer: pods whose containers all run inside one application kernel per pod.

A pod is one sandbox of the configured :class:`~.kernel.Kernel` (runsc here, Quark where
installed); its host process (the Sentry) is the pod's pid and is watched with a pidfd, so a
sandbox that dies (``kill -9``) makes the pod NOTREADY and its Wait return. Containers run through
the separate quark-task server (runsc) or Quark's own task socket. Every change is saved to
``<dir>/<id>/sandbox.json``; after a restart a pod whose sandbox process is alive is Ready again,
any other pod is cleaned up and forgotten (NOT_FOUND).
"""
from __future__ import annotations

import logging
import os
import shutil
from datetime import datetime, timezone
from typing import Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.oci import ExitWatch, is_same_process
from kuasar_shared.sandbox import CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff
from kuasar_shared.sandbox.pods import PodTable, parse_time
from kuasar_shared.sandbox.taskserver import TaskServer
from kuasar_shared.task.backend import CgroupStats

from kuasar_quark_sandboxer.kernel import Kernel
from kuasar_quark_sandboxer.pod import Pod, PodState

__all__ = ["QuarkSandboxer", "UNEXPECTED_EXIT"]

log = logging.getLogger(__name__)

#: status reported when a sandbox died without being stopped (its status is not ours to reap)
UNEXPECTED_EXIT = 255


class QuarkSandboxer(Sandboxer):
    """Serves every quark pod of one ``--dir``.

    Args:
        kernel: the application kernel; task_server: the shared task server (None when the kernel
            serves the Task API itself).

    Resource handling: owns the pidfd watches and the task-server handle, released by
    :meth:`close` (pods and the task server keep running).
    """

    def __init__(self, directory: str, kernel: Kernel, task_server: Optional[TaskServer]) -> None:
        self.directory = directory
        self.pods: PodTable[Pod] = PodTable(directory, Pod)
        self.kernel = kernel
        self.task_server = task_server
        self._watches: dict[str, ExitWatch] = {}

    def __repr__(self) -> str:
        return f"QuarkSandboxer(dir={self.directory!r}, kernel={self.kernel.name})"

    def _address(self, pod: Pod) -> str:
        if pod.address:
            return pod.address
        return self.task_server.address if self.task_server is not None else ""

    def _status(self, pod: Pod) -> SandboxStatus:
        return SandboxStatus(id=pod.id, ready=pod.state is PodState.READY, pid=pod.pid,
                             created_at=parse_time(pod.created_at), exited_at=parse_time(pod.exited_at),
                             address=self._address(pod), info={"netns": pod.netns, "kernel": pod.kernel},
                             tasks=pod.task_resources)

    async def create(self, req: CreateSandbox) -> None:
        if req.netns_path and not os.path.exists(req.netns_path):
            raise InvalidArgument(f"sandbox {req.id}: network namespace {req.netns_path} does not exist")
        if req.host_pid:
            raise InvalidArgument(f"sandbox {req.id}: the host PID namespace (pid: NODE) cannot be shared "
                                  f"with an application kernel")
        created = (req.created_at or datetime.now(timezone.utc)).isoformat()
        pod = Pod(id=req.id, kernel=self.kernel.name, netns=req.netns_path, hostname=req.hostname,
                  cgroup_parent=req.cgroup_parent, created_at=created)
        try:
            self.pods.add(pod)
        except OSError:
            shutil.rmtree(self.pods.pod_dir(req.id), ignore_errors=True)
            raise
        log.info("sandbox %s created (netns %s)", req.id, req.netns_path or "none")

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
            started = await self.kernel.start(pod, self.pods.pod_dir(id))
            pod.pid, pod.pid_start, pod.address, pod.runtime = (started.pid, started.pid_start, started.address,
                                                                started.runtime)
            self.pods.running(pod)
            self._watch(pod)
            log.info("sandbox %s ready, %s pid %d", id, self.kernel.name, pod.pid)
            return self._status(pod)

    def _watch(self, pod: Pod) -> None:
        self._watches[pod.id] = ExitWatch(pod.pid, lambda: self._on_sandbox_exit(pod.id))

    def _on_sandbox_exit(self, sandbox_id: str) -> None:
        self._watches.pop(sandbox_id, None)
        pod = self.pods.find(sandbox_id)
        if pod is None:
            return
        if pod.state is PodState.READY:
            log.warning("sandbox %s: %s pid %d exited unexpectedly", sandbox_id, pod.kernel, pod.pid)
        self.pods.stopped(pod, UNEXPECTED_EXIT)

    async def _shutdown_tasks(self, pod: Pod, now: bool) -> None:
        if self.task_server is None or not self.kernel.uses_task_server:
            return
        try:
            await self.task_server.shutdown_pod(pod.id, now=now)
        except KuasarError as err:
            log.warning("sandbox %s: task server could not %s its containers: %s", pod.id,
                        "remove" if now else "stop", err)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self.pods.lock(id):
            await self._stop(self.pods.get(id))

    async def _stop(self, pod: Pod) -> None:
        if pod.state is PodState.READY:
            await self._shutdown_tasks(pod, now=False)
            watch = self._watches.pop(pod.id, None)
            if watch is not None:
                watch.cancel()
            await self.kernel.stop(pod, self.pods.pod_dir(pod.id))
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
            await self._shutdown_tasks(pod, now=True)
            await self._remove(pod)
        log.info("sandbox %s removed", id)

    async def _remove(self, pod: Pod) -> None:
        """Forget a stopped pod: the kernel's state, the pod's cgroup and its directory."""
        try:
            await self.kernel.cleanup(pod, self.pods.pod_dir(pod.id))
        except KuasarError as err:
            log.error("sandbox %s: kernel clean-up failed: %s", pod.id, err)
        self.pods.remove(pod)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        await self.pods.update_tasks(id, diff)

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        return self.pods.metrics(id)

    async def recover(self) -> None:
        for sandbox_id, pod in self.pods.load_all():
            if not isinstance(pod, Pod):
                log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, pod)
                await self._remove(Pod(id=sandbox_id, kernel=self.kernel.name))
                continue
            if pod.state is PodState.READY and not is_same_process(pod.pid, pod.pid_start):
                log.error("sandbox %s: %s pid %d is gone; cleaning up", pod.id, pod.kernel, pod.pid)
                await self._shutdown_tasks(pod, now=True)
                await self._remove(pod)
                continue
            if pod.state is PodState.READY:
                self._watch(pod)
            self.pods.adopt(pod)
            log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)

    async def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
        if self.task_server is not None:
            await self.task_server.close()
