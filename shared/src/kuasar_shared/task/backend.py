"""The TaskBackend interface: what a sandbox type implements to serve the Task API.

The ttrpc servicer (:mod:`kuasar_shared.task.service`) validates and converts wire messages into
the plain dataclasses below (and those of :mod:`kuasar_shared.values`) and calls one backend method
per RPC; backends never see protobuf.
Errors are raised as :mod:`kuasar_shared.errors` types (NotFound for unknown ids, FailedPrecondition
for wrong states, ...). ``exec_id == ""`` always means the container's init process.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Optional

from kuasar_shared.errors import Unimplemented
from kuasar_shared.values import CgroupStats, ExitInfo, Mount, ProcessState, Stdio

__all__ = ["CreateTask", "ExecProcess", "TaskBackend"]


@dataclass(frozen=True)
class CreateTask:
    id: str
    bundle: str
    rootfs: tuple[Mount, ...] = ()
    stdio: Stdio = Stdio()
    namespace: str = ""
    #: containerd.runc.v1.Options fields when the engine sent them (binary_name, root, systemd_cgroup...).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ExecProcess:
    id: str
    exec_id: str
    stdio: Stdio
    #: the OCI Process object (decoded JSON of ExecProcessRequest.spec)
    spec: dict[str, Any]


class TaskBackend(abc.ABC):
    """One implementation per sandbox type; one instance serves every pod of the type."""

    @abc.abstractmethod
    async def create(self, req: CreateTask) -> int:
        """Create the container (not started); return its init pid."""

    @abc.abstractmethod
    async def start(self, id: str, exec_id: str) -> int:
        """Start the init process or a previously added exec; return its pid."""

    @abc.abstractmethod
    async def delete(self, id: str, exec_id: str) -> ExitInfo:
        """Delete a stopped (or never started) process; for the init process, the container."""

    @abc.abstractmethod
    async def exec(self, req: ExecProcess) -> None:
        """Register an additional process in a running container (started by :meth:`start`)."""

    @abc.abstractmethod
    async def state(self, id: str, exec_id: str) -> ProcessState:
        ...

    @abc.abstractmethod
    async def kill(self, id: str, exec_id: str, signal: int, all: bool) -> None:
        ...

    @abc.abstractmethod
    async def wait(self, id: str, exec_id: str) -> ExitInfo:
        """Block until the process exits."""

    @abc.abstractmethod
    async def pids(self, id: str) -> list[int]:
        ...

    @abc.abstractmethod
    async def stats(self, id: str) -> CgroupStats:
        ...

    async def pause(self, id: str) -> None:
        raise Unimplemented("pause is not supported by this sandbox type")

    async def resume(self, id: str) -> None:
        raise Unimplemented("resume is not supported by this sandbox type")

    async def update(self, id: str, resources: dict[str, Any], annotations: dict[str, str]) -> None:
        """Apply new OCI linux.resources (decoded JSON of UpdateTaskRequest.resources)."""
        raise Unimplemented("update is not supported by this sandbox type")

    async def close_io(self, id: str, exec_id: str, stdin: bool) -> None:
        ...

    async def resize_pty(self, id: str, exec_id: str, width: int, height: int) -> None:
        raise Unimplemented("terminals are not supported by this sandbox type")

    async def checkpoint(self, id: str, path: str) -> None:
        raise Unimplemented("checkpoint is not supported")

    async def interrupted_create(self, req: CreateTask) -> None:
        """A Create of this container was cut short by a task server restart and left no record:
        remove what it may have made so that it can run again. The default has nothing to undo."""

    async def interrupted_start(self, id: str, exec_id: str) -> Optional[int]:
        """A Start of this process was cut short by a task server restart (see task.journal): its pid
        when it started after all (and is tracked from now on), None when it did not and may be
        started again. The default knows no trace a Start leaves and answers None."""
        return None

    async def connect(self, id: str) -> int:
        """Return the init pid of a known container (NotFound otherwise)."""
        return (await self.state(id, "")).pid

    async def shutdown(self, id: str, now: bool) -> None:
        """Called when the engine has no more use for a pod's tasks; the server itself stays up."""
