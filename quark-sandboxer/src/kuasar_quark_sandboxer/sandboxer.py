"""QuarkSandboxer: pods whose containers all run inside one application kernel per pod.

A pod is one sandbox of the configured :class:`~.kernel.Kernel` (runsc here, Quark where
installed); its host process (the Sentry) is the pod's pid and is watched with a pidfd, so a
sandbox that dies (``kill -9``) makes the pod NOTREADY and its Wait return. Containers run through
the separate quark-task server (runsc) or Quark's own task socket. Every change is saved to
``<dir>/<id>/sandbox.json``; after a restart a pod whose sandbox process is alive is Ready again,
any other pod is cleaned up and forgotten (NOT_FOUND), and so is a pod whose Start a crash cut short
(its processes, cgroups and files: the engine's Start failed, it will not come back for the pod).
"""
from __future__ import annotations

import logging
from typing import Optional

from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.process_identity import is_same_process
from kuasar_shared.sandbox import CreateSandbox, SandboxStatus
from kuasar_shared.sandbox.lifecycle import UNEXPECTED_EXIT, PodSandboxer
from kuasar_shared.sandbox.podfiles import write_pod_files
from kuasar_shared.sandbox.pods import check_create, parse_time
from kuasar_shared.sandbox.task_supervisor import TaskServer

from kuasar_quark_sandboxer.kernel import Kernel
from kuasar_quark_sandboxer.pod import Pod, PodState

__all__ = ["QuarkSandboxer", "UNEXPECTED_EXIT"]

log = logging.getLogger(__name__)


class QuarkSandboxer(PodSandboxer[Pod]):
    """Serves every quark pod of one ``--dir``.

    Args:
        kernel: the application kernel; task_server: the shared task server (None when the kernel
            serves the Task API itself).

    Resource handling: owns the pidfd watches and the task-server handle, released by
    :meth:`close` (pods and the task server keep running).
    """

    def __init__(self, directory: str, kernel: Kernel, task_server: Optional[TaskServer]) -> None:
        super().__init__(directory, Pod, task_server)
        self.kernel = kernel

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
        created = check_create(req, host_pid_refused_by="an application kernel")
        pod = Pod(id=req.id, kernel=self.kernel.name, netns=req.netns_path, hostname=req.hostname,
                  host_network=req.host_network, cgroup_parent=req.cgroup_parent, created_at=created)
        self.pods.add(pod)
        try:
            write_pod_files(self.pods.pod_dir(req.id), req.hostname, req.dns_config)
        except InvalidArgument as err:
            self.pods.remove(pod)
            raise InvalidArgument(f"sandbox {req.id}: {err.message}") from err
        log.info("sandbox %s created (netns %s)", req.id, req.netns_path or "none")

    async def _start_pod(self, pod: Pod) -> None:
        pod.starting = True  # saved before any effect: see _readopt
        if pod.cgroup_parent:
            self.pods.create_cgroup(pod)
        self.pods.save(pod)
        started = await self.kernel.start(pod, self.pods.pod_dir(pod.id))
        pod.pid, pod.pid_start, pod.address, pod.runtime = (started.pid, started.pid_start, started.address,
                                                            started.runtime)
        pod.starting = False
        self._watch(pod.id, pod.pid, pod.kernel)
        log.info("sandbox %s ready, %s pid %d", pod.id, self.kernel.name, pod.pid)

    async def _shutdown_tasks(self, pod: Pod, now: bool) -> None:
        if self.kernel.uses_task_server:
            await super()._shutdown_tasks(pod, now)

    async def _stop_pod(self, pod: Pod) -> None:
        await self.kernel.stop(pod, self.pods.pod_dir(pod.id))

    async def _remove(self, pod: Pod) -> None:
        """Forget a stopped pod: the kernel's state, the pod's cgroup and its directory."""
        try:
            await self.kernel.cleanup(pod, self.pods.pod_dir(pod.id))
        except KuasarError as err:
            log.error("sandbox %s: kernel clean-up failed: %s", pod.id, err)
        self.pods.remove(pod)

    async def _drop_unreadable(self, sandbox_id: str) -> None:
        await self._remove(Pod(id=sandbox_id, kernel=self.kernel.name))

    async def _readopt(self, pod: Pod) -> bool:
        if pod.state is PodState.CREATED and pod.starting:
            log.warning("sandbox %s: its Start was cut short by a restart and the engine gave up on it; "
                        "rolling it back", pod.id)
            await self.kernel.abandon(pod, self.pods.pod_dir(pod.id))
            self.pods.remove(pod)
            return False
        if pod.state is not PodState.READY:
            return True
        if not is_same_process(pod.pid, pod.pid_start):
            log.error("sandbox %s: %s pid %d is gone; cleaning up", pod.id, pod.kernel, pod.pid)
            await self._discard(pod)
            return False
        self._watch(pod.id, pod.pid, pod.kernel)
        return True
