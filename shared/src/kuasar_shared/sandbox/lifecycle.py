"""PodSandboxer: the Sandboxer calls that are the same for every sandbox type kept in a PodTable.

Sandbox types differ in what holds a pod (a namespace holder, an application kernel, nothing but a
cgroup) and in what recovery checks, not in the sequence around it: Start takes the pod's lock,
requires CREATED and marks it READY once its holder runs; a holder process is watched with a
pidfd and its unexpected exit stops the pod (status 255, not ours to reap); Stop asks the task
server to stop the pod's containers, then stops the holder; Shutdown also removes the containers,
then the pod; Recover drops unreadable records and re-adopts the others; Close releases watches
and the task-server handle (pods and the task server keep running). Subclasses fill in
:meth:`PodSandboxer._start_pod`, :meth:`PodSandboxer._stop_pod` and the other hooks.
"""
from __future__ import annotations

import abc
import logging
from typing import Any, Generic, Optional, Type

from kuasar_shared import tracing
from kuasar_shared.errors import KuasarError
from kuasar_shared.process_identity import ExitWatch
from kuasar_shared.sandbox.api import ExitStatus, Sandboxer, SandboxStatus, TaskDiff
from kuasar_shared.sandbox.observed import TypeMetrics
from kuasar_shared.sandbox.pods import P, PodRecord, PodState, PodTable
from kuasar_shared.sandbox.task_supervisor import TaskServer
from kuasar_shared.values import CgroupStats

__all__ = ["PodSandboxer", "UNEXPECTED_EXIT"]

log = logging.getLogger(__name__)

#: status reported when a pod's process died without being stopped (its status is not ours to reap)
UNEXPECTED_EXIT = 255


class PodSandboxer(Sandboxer, Generic[P]):
    """Pods of one ``--dir`` whose containers (usually) run in ``task_server``.

    Resource handling: owns the pidfd watches and the task-server handle, released by :meth:`close`.
    """

    #: the series this sandbox type adds to the metrics (None: the shared ones only)
    type_metrics: Optional[TypeMetrics[Any]] = None

    def __init__(self, directory: str, record_type: Type[P], task_server: Optional[TaskServer]) -> None:
        self.directory = directory
        self.pods: PodTable[P] = PodTable(directory, record_type)
        self.task_server = task_server
        self._watches: dict[str, ExitWatch] = {}
        #: what :meth:`recover` did with the pods it found on disk, by outcome (the metrics report it)
        self.recoveries: dict[str, int] = {}

    # -- what subclasses do ----------------------------------------------------------------------
    @abc.abstractmethod
    def _status(self, pod: P) -> SandboxStatus:
        """The Status reply for ``pod``."""

    @abc.abstractmethod
    async def _start_pod(self, pod: P) -> None:
        """Make what holds the CREATED ``pod`` (under its lock; the caller then marks it READY)."""

    async def _stop_pod(self, pod: P) -> None:
        """Stop what holds the READY ``pod`` (its containers are stopped already)."""

    async def _remove(self, pod: P) -> None:
        """Forget a stopped pod: its record, cgroup and directory (containers are removed already)."""
        self.pods.remove(pod)

    async def _drop_unreadable(self, sandbox_id: str) -> None:
        """Clean up after a pod whose record cannot be read (Recover)."""
        self.pods.remove(self.pods.record_type(id=sandbox_id))

    async def _readopt(self, pod: P) -> bool:
        """Take ``pod`` over after a restart; False when it was cleaned up instead."""
        return True

    # -- shared mechanics ------------------------------------------------------------------------
    def _watch(self, sandbox_id: str, pid: int, what: str) -> None:
        """Stop the pod (status :data:`UNEXPECTED_EXIT`) when its ``what`` process ``pid`` exits."""
        def exited() -> None:
            self._watches.pop(sandbox_id, None)
            pod = self.pods.find(sandbox_id)
            if pod is None:
                return
            if pod.state is PodState.READY:
                log.warning("sandbox %s: %s pid %d exited unexpectedly", sandbox_id, what, pid)
            self.pods.stopped(pod, UNEXPECTED_EXIT)
        self._watches[sandbox_id] = ExitWatch(pid, exited)

    def _unwatch(self, sandbox_id: str) -> None:
        watch = self._watches.pop(sandbox_id, None)
        if watch is not None:
            watch.cancel()

    async def _shutdown_tasks(self, pod: P, now: bool) -> None:
        """Have the task server stop (``now``: remove) the pod's containers; failures are logged."""
        if self.task_server is None:
            return
        try:
            with tracing.span("task server: %s containers" % ("remove" if now else "stop"), sandbox_id=pod.id):
                await self.task_server.shutdown_pod(pod.id, now=now)
        except KuasarError as err:
            log.warning("sandbox %s: task server could not %s its containers: %s", pod.id,
                        "remove" if now else "stop", err)

    async def _discard(self, pod: P) -> None:
        """Remove a pod that cannot be recovered, with its containers."""
        await self._shutdown_tasks(pod, now=True)
        await self._remove(pod)

    async def _stop(self, pod: P) -> None:
        if pod.state is PodState.READY:
            await self._shutdown_tasks(pod, now=False)
            self._unwatch(pod.id)
            with tracing.span("pod stop", sandbox_id=pod.id):
                await self._stop_pod(pod)
            self.pods.stopped(pod, 0)
            log.info("sandbox %s stopped", pod.id)
        else:
            self.pods.stopped(pod, pod.exit_status)

    # -- Sandbox API -----------------------------------------------------------------------------
    async def start(self, id: str) -> SandboxStatus:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            pod.require(PodState.CREATED, "start")
            with tracing.span("pod start", sandbox_id=id):
                await self._start_pod(pod)
            self.pods.running(pod)
            return self._status(pod)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        async with self.pods.lock(id):
            await self._stop(self.pods.get(id))

    async def wait(self, id: str) -> ExitStatus:
        return await self.pods.wait(id)

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        return self._status(self.pods.get(id))

    async def shutdown(self, id: str) -> None:
        async with self.pods.lock(id):
            pod = self.pods.get(id)
            await self._stop(pod)
            await self._shutdown_tasks(pod, now=True)
            with tracing.span("pod remove", sandbox_id=id):
                await self._remove(pod)
        log.info("sandbox %s removed", id)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        await self.pods.update_tasks(id, diff)

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        return self.pods.metrics(id)

    async def recover(self) -> None:
        for sandbox_id, pod in self.pods.load_all():
            if not isinstance(pod, PodRecord):
                log.error("sandbox %s: unrecoverable state (%s); cleaning up", sandbox_id, pod)
                await self._drop_unreadable(sandbox_id)
                self._recovered("unreadable")
                continue
            if await self._readopt(pod):
                self.pods.adopt(pod)
                log.info("sandbox %s recovered (%s)", pod.id, pod.state.value)
                self._recovered("readopted_" + pod.state.value)
            else:
                self._recovered("cleaned_up")

    def _recovered(self, outcome: str) -> None:
        self.recoveries[outcome] = self.recoveries.get(outcome, 0) + 1

    async def close(self) -> None:
        for watch in self._watches.values():
            watch.cancel()
        self._watches.clear()
        if self.task_server is not None:
            await self.task_server.close()
