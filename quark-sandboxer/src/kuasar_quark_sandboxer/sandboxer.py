"""QuarkSandboxer: pods whose containers all run inside one application kernel per pod.

A pod is one sandbox of the configured :class:`~.kernel.Kernel` (runsc here, Quark where
installed); its host process (the Sentry) is the pod's pid and is watched with a pidfd, so a
sandbox that dies (``kill -9``) makes the pod NOTREADY and its Wait return. Containers run through
the separate quark-task server (runsc) or Quark's own task socket. Every change is saved to
``<dir>/<id>/sandbox.json``; after a restart a pod whose sandbox process is alive is Ready again,
any other pod is cleaned up and forgotten (NOT_FOUND).
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
from datetime import datetime, timezone
from typing import Optional

from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KuasarError, NotFound
from kuasar_shared.oci import ExitWatch, is_same_process
from kuasar_shared.sandbox import (CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff,
                                   TaskResources, encode_tasks, parse_tasks)
from kuasar_shared.sandbox.taskserver import TaskServer
from kuasar_shared.store import CorruptState, PodStore
from kuasar_shared.task.backend import CgroupStats

from kuasar_quark_sandboxer.kernel import Kernel
from kuasar_quark_sandboxer.pod import RECORD_NAME, Pod, PodState

__all__ = ["QuarkSandboxer", "UNEXPECTED_EXIT"]

log = logging.getLogger(__name__)

#: status reported when a sandbox died without being stopped (its status is not ours to reap)
UNEXPECTED_EXIT = 255


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _time(value: str) -> Optional[datetime]:
    return datetime.fromisoformat(value) if value else None


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
        self.store = PodStore(directory, RECORD_NAME)
        self.kernel = kernel
        self.task_server = task_server
        self._pods: dict[str, Pod] = {}
        self._watches: dict[str, ExitWatch] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"QuarkSandboxer(dir={self.directory!r}, kernel={self.kernel.name}, pods={len(self._pods)})"

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

    def _address(self, pod: Pod) -> str:
        if pod.address:
            return pod.address
        return self.task_server.address if self.task_server is not None else ""

    def _status(self, pod: Pod) -> SandboxStatus:
        return SandboxStatus(id=pod.id, ready=pod.state is PodState.READY, pid=pod.pid,
                             created_at=_time(pod.created_at), exited_at=_time(pod.exited_at),
                             address=self._address(pod),
                             info={"netns": pod.netns, "kernel": pod.kernel},
                             tasks=parse_tasks(pod.tasks.encode()) if pod.tasks else TaskResources())

    async def create(self, req: CreateSandbox) -> None:
        if req.id in self._pods:
            raise AlreadyExists(f"sandbox {req.id} already exists")
        if req.netns_path and not os.path.exists(req.netns_path):
            raise InvalidArgument(f"sandbox {req.id}: network namespace {req.netns_path} does not exist")
        if req.host_pid:
            raise InvalidArgument(f"sandbox {req.id}: the host PID namespace (pid: NODE) cannot be shared "
                                  f"with an application kernel")
        created = (req.created_at or datetime.now(timezone.utc)).isoformat()
        pod = Pod(id=req.id, kernel=self.kernel.name, netns=req.netns_path, hostname=req.hostname,
                  cgroup_parent=req.cgroup_parent, created_at=created)
        try:
            self._save(pod)
        except OSError:
            shutil.rmtree(self.store.pod_dir(req.id), ignore_errors=True)
            raise
        self._pods[req.id] = pod
        log.info("sandbox %s created (netns %s)", req.id, req.netns_path or "none")

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
            started = await self.kernel.start(pod, self.store.pod_dir(id))
            pod.pid, pod.pid_start, pod.address, pod.runtime = (started.pid, started.pid_start, started.address,
                                                                started.runtime)
            pod.state = PodState.READY
            self._save(pod)
            self._watch(pod)
            log.info("sandbox %s ready, %s pid %d", id, self.kernel.name, pod.pid)
            return self._status(pod)

    def _watch(self, pod: Pod) -> None:
        self._event(pod.id).clear()
        self._watches[pod.id] = ExitWatch(pod.pid, lambda: self._on_sandbox_exit(pod.id))

    def _on_sandbox_exit(self, sandbox_id: str) -> None:
        self._watches.pop(sandbox_id, None)
        pod = self._pods.get(sandbox_id)
        if pod is None:
            return
        if pod.state is PodState.READY:
            log.warning("sandbox %s: %s pid %d exited unexpectedly", sandbox_id, pod.kernel, pod.pid)
            pod.state, pod.exited_at, pod.exit_status = PodState.STOPPED, _now(), UNEXPECTED_EXIT
            self._save(pod)
        self._event(sandbox_id).set()

    async def _shutdown_tasks(self, pod: Pod, now: bool) -> None:
        if self.task_server is None or not self.kernel.uses_task_server:
            return
        try:
            await self.task_server.shutdown_pod(pod.id, now=now)
        except KuasarError as err:
            log.warning("sandbox %s: task server could not %s its containers: %s", pod.id,
                        "remove" if now else "stop", err)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self._lock(id):
            await self._stop(self._pod(id))

    async def _stop(self, pod: Pod) -> None:
        if pod.state is PodState.READY:
            await self._shutdown_tasks(pod, now=False)
            watch = self._watches.pop(pod.id, None)
            if watch is not None:
                watch.cancel()
            await self.kernel.stop(pod, self.store.pod_dir(pod.id))
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
            await self._shutdown_tasks(pod, now=True)
            await self._remove(pod)
            self._exited.pop(id, None)
        self._locks.pop(id, None)
        log.info("sandbox %s removed", id)

    async def _remove(self, pod: Pod) -> None:
        """Forget a stopped pod: the kernel's state, the pod's cgroup and its directory."""
        self._pods.pop(pod.id, None)
        try:
            await self.kernel.cleanup(pod, self.store.pod_dir(pod.id))
        except KuasarError as err:
            log.error("sandbox %s: kernel clean-up failed: %s", pod.id, err)
        if pod.cgroup_parent:
            cgroup = Cgroup.open(pod.cgroup_parent, owned_depth=pod.cgroup_owned_depth)
            try:
                cgroup.delete()
            except (OSError, KuasarError) as err:
                log.warning("sandbox %s: cannot remove cgroup %r: %s", pod.id, cgroup, err)
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
                await self._remove(Pod(id=sandbox_id, kernel=self.kernel.name))
                continue
            if pod.state is PodState.READY and not is_same_process(pod.pid, pod.pid_start):
                log.error("sandbox %s: %s pid %d is gone; cleaning up", pod.id, pod.kernel, pod.pid)
                await self._shutdown_tasks(pod, now=True)
                await self._remove(pod)
                continue
            self._pods[pod.id] = pod
            if pod.state is PodState.READY:
                self._watch(pod)
            elif pod.state is PodState.STOPPED:
                self._event(pod.id).set()
            log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)

    async def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
        if self.task_server is not None:
            await self.task_server.close()
