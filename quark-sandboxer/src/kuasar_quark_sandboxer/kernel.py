"""The one interface an application kernel implements for :class:`~.sandboxer.QuarkSandboxer`.

A kernel turns a pod record into a running sandbox and back: gVisor's runsc
(:mod:`.kernels.runsc`, containers run by the shared quark-task server) or Quark
(:mod:`.kernels.quark`, whose sandbox process serves the Task API itself). The pod lifecycle,
persistence and recovery are written once in the sandboxer against this class.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Optional

from kuasar_quark_sandboxer.pod import Pod, RuntimeInvocation

__all__ = ["Kernel", "Started"]


@dataclass(frozen=True)
class Started:
    """A started sandbox: its host process and where its Task API is (``""``: the task server)."""

    pid: int
    pid_start: Optional[int]
    address: str = ""
    runtime: RuntimeInvocation = field(default_factory=RuntimeInvocation)


class Kernel(abc.ABC):
    """An application kernel. Methods get the pod's record and its directory ``<dir>/<id>``."""

    #: the ``[sandbox] kernel`` value
    name = ""
    #: True when containers run through the shared quark-task server
    uses_task_server = True

    @abc.abstractmethod
    async def start(self, pod: Pod, pod_dir: str) -> Started:
        """Create and start the pod's sandbox; on failure nothing of it may keep running.

        :raise KuasarError: with the kernel's own message.
        """

    @abc.abstractmethod
    async def stop(self, pod: Pod, pod_dir: str) -> None:
        """Make the sandbox's processes exit (every container with them) and wait for that."""

    @abc.abstractmethod
    async def cleanup(self, pod: Pod, pod_dir: str) -> None:
        """Remove what the kernel keeps of a stopped pod (state files, sockets); idempotent."""
