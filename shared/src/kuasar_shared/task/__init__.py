"""The Task API (ttrpc containerd.task.v3/v2) over a TaskBackend.

The value types load with the package; the ttrpc service (:class:`TaskService`, :data:`TASK_SERVICES`)
loads on first use, so that a sandboxer, which only needs the types, does not pay for the task server
at every start (it is ~30 ms of a restart).
"""
from typing import Any

from kuasar_shared.values import CgroupStats, ExitInfo, Mount, ProcessState, Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask, ExecProcess, TaskBackend

__all__ = ["CgroupStats", "CreateTask", "ExecProcess", "ExitInfo", "Mount", "ProcessState", "Stdio", "TaskBackend",
           "TaskStatus", "TaskService", "TASK_SERVICES"]


def __getattr__(name: str) -> Any:
    if name in ("TaskService", "TASK_SERVICES"):
        from kuasar_shared.task import service
        return getattr(service, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
