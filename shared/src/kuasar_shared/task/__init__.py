"""The Task API (ttrpc containerd.task.v3/v2) over a TaskBackend."""
from kuasar_shared.task.backend import (CgroupStats, CreateTask, ExecProcess, ExitInfo, Mount, ProcessState, Stdio,
                                        TaskBackend, TaskStatus)
from kuasar_shared.task.service import TASK_SERVICES, TaskService

__all__ = ["CgroupStats", "CreateTask", "ExecProcess", "ExitInfo", "Mount", "ProcessState", "Stdio", "TaskBackend",
           "TaskStatus", "TaskService", "TASK_SERVICES"]
