"""The one interface an application kernel implements for :class:`~.sandboxer.QuarkSandboxer`.

A kernel turns a pod record into a running sandbox and back: gVisor's runsc
(:mod:`.kernels.runsc`, containers run by the shared quark-task server) or Quark
(:mod:`.kernels.quark`, whose sandbox process serves the Task API itself). The pod lifecycle,
persistence and recovery are written once in the sandboxer against this class.
"""
from __future__ import annotations

import abc
import asyncio
import os
from dataclasses import dataclass, field
from typing import Optional

from kuasar_shared.process_identity import kill

from kuasar_quark_sandboxer.pod import Pod, RuntimeInvocation

__all__ = ["Kernel", "Started", "pids_naming"]


def pids_naming(text: str) -> list[int]:
    """Live processes whose command line contains ``text`` (a pod's directory: its sandbox, gofers, and
    runtime calls still running for it)."""
    needle = text.encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if needle in handle.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


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
    #: seconds :meth:`abandon` keeps ending the processes of a cut-short start
    abandon_timeout = 10.0

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

    async def abandon(self, pod: Pod, pod_dir: str) -> None:
        """Undo a :meth:`start` that a crash of the sandboxer cut short, wherever it stopped: end
        every process it may have started (the pod's pid is not recorded yet), then :meth:`cleanup`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.abandon_timeout
        while loop.time() < deadline:  # again until none is left: a runtime call may still spawn one
            pids = pids_naming(os.path.join(pod_dir, ""))
            if not pids:
                break
            for pid in pids:
                kill(pid)
            await asyncio.sleep(0.05)
        await self.cleanup(pod, pod_dir)
