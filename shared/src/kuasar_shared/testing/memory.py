"""InMemorySandboxer: a toy :class:`~kuasar_shared.sandbox.api.Sandboxer` that keeps pods in memory.

A fake, named as such: it runs no process and serves no task API. It exists so the Sandbox API
server, the conformance suite and the containerd trace replays can be exercised without a real
sandbox type, and as the smallest example of the contract: the state machine every sandboxer
must follow (created -> running -> stopped, wrong moves are FailedPrecondition), Wait released by
Stop, NotFound after Shutdown. Errors can be injected per method and pod with :meth:`fail_next`.
"""
from __future__ import annotations

import asyncio
import enum
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from kuasar_shared.errors import AlreadyExists, FailedPrecondition, KuasarError, NotFound
from kuasar_shared.sandbox.api import (CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff,
                                       TaskResources)
from kuasar_shared.values import CgroupStats

__all__ = ["InMemorySandboxer", "PodState"]

#: Exit status reported for a pod stopped without a timeout (killed, as 128 + SIGKILL).
_KILLED = 137


class PodState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"


@dataclass
class _Pod:
    request: CreateSandbox
    stopped: asyncio.Event
    state: PodState = PodState.CREATED
    pid: int = 0
    exit: Optional[ExitStatus] = None
    tasks: TaskResources = field(default_factory=TaskResources)

    def __repr__(self) -> str:
        return "<pod %s %s>" % (self.request.id, self.state.value)


class InMemorySandboxer(Sandboxer):
    """Pods as plain records; ``start`` reports ``pid`` (default: this process, a pid that exists)
    and the task address ``ttrpc+unix://<root>/task.sock``.

    :param root: absolute directory used only to form the task address.
    :param pid: pid reported for running pods.
    """

    def __init__(self, root: str = "/run/kuasar-memory", pid: Optional[int] = None) -> None:
        self._root = os.path.abspath(root)
        self._pid = pid if pid is not None else os.getpid()
        self._pods: dict[str, _Pod] = {}
        self._failures: dict[tuple[str, str], KuasarError] = {}

    @property
    def address(self) -> str:
        return "ttrpc+unix://" + os.path.join(self._root, "task.sock")

    def pod_ids(self) -> list[str]:
        return sorted(self._pods)

    def fail_next(self, method: str, id: str, error: KuasarError) -> None:
        """Make the next call of ``method`` (e.g. ``"create"``) for pod ``id`` raise ``error``."""
        self._failures[(method, id)] = error

    def _check_failure(self, method: str, id: str) -> None:
        error = self._failures.pop((method, id), None)
        if error is not None:
            raise error

    def _pod(self, id: str) -> _Pod:
        try:
            return self._pods[id]
        except KeyError:
            raise NotFound("sandbox %s not found" % id) from None

    def _status(self, pod: _Pod) -> SandboxStatus:
        running = pod.state is PodState.RUNNING
        return SandboxStatus(
            id=pod.request.id, ready=running, pid=pod.pid if running else 0,
            created_at=pod.request.created_at, exited_at=pod.exit.exited_at if pod.exit else None,
            address=self.address, info={"state": pod.state.value}, tasks=pod.tasks)

    async def create(self, req: CreateSandbox) -> None:
        self._check_failure("create", req.id)
        if req.id in self._pods:
            raise AlreadyExists("sandbox %s already exists" % req.id)
        self._pods[req.id] = _Pod(request=req, stopped=asyncio.Event())

    async def start(self, id: str) -> SandboxStatus:
        self._check_failure("start", id)
        pod = self._pod(id)
        if pod.state is not PodState.CREATED:
            raise FailedPrecondition("sandbox %s cannot start: it is %s, not created" % (id, pod.state.value))
        pod.state = PodState.RUNNING
        pod.pid = self._pid
        return self._status(pod)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        self._check_failure("stop", id)
        pod = self._pod(id)
        if pod.state is PodState.STOPPED:
            return
        pod.state = PodState.STOPPED
        pod.exit = ExitStatus(exit_status=0 if timeout_secs else _KILLED,
                              exited_at=datetime.now(timezone.utc))
        pod.stopped.set()

    async def wait(self, id: str) -> ExitStatus:
        self._check_failure("wait", id)
        pod = self._pod(id)
        await pod.stopped.wait()
        assert pod.exit is not None
        return pod.exit

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        self._check_failure("status", id)
        return self._status(self._pod(id))

    async def shutdown(self, id: str) -> None:
        self._check_failure("shutdown", id)
        await self.stop(id, None)
        del self._pods[id]

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        self._check_failure("metrics", id)
        pod = self._pod(id)
        return CgroupStats(pids_current=1 if pod.state is PodState.RUNNING else 0)

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        self._check_failure("update_tasks", id)
        self._pod(id).tasks = diff.new
