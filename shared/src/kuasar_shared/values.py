"""Plain value types every layer shares: mounts, stdio, process status and exit, cgroup statistics, routes.

They sit at the bottom of ``kuasar_shared`` so that kernel wrappers (``cgroups``, ``mounts``), stdio
plumbing, the Sandbox API and the Task API all speak the same types without importing each other.
Nothing here imports anything of ``kuasar_shared``.
"""
from __future__ import annotations

import enum
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Optional

__all__ = ["TaskStatus", "Mount", "Stdio", "ProcessState", "ExitInfo", "CgroupStats", "Route"]


class TaskStatus(enum.IntEnum):
    """containerd.v1.types.Status."""

    UNKNOWN = 0
    CREATED = 1
    RUNNING = 2
    STOPPED = 3
    PAUSED = 4
    PAUSING = 5


@dataclass(frozen=True)
class Mount:
    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class Stdio:
    """Stdio strings as the engine sent them: FIFO paths, streaming URLs
    (``ttrpc+unix:///x.sock?streaming_id=<id>-stdout``) or empty."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False


@dataclass
class ProcessState:
    id: str
    exec_id: str
    bundle: str
    pid: int
    status: TaskStatus
    stdio: Stdio
    exit_status: int = 0
    exited_at: Optional[datetime] = None


@dataclass(frozen=True)
class ExitInfo:
    pid: int
    exit_status: int
    exited_at: Optional[datetime]


@dataclass(frozen=True)
class CgroupStats:
    """The cgroup numbers CRI reads from Task.Stats (rendered as io.containerd.cgroups.v1.Metrics)."""

    cpu_total_ns: int = 0
    cpu_user_ns: int = 0
    cpu_kernel_ns: int = 0
    memory_usage: int = 0
    memory_limit: int = 0
    memory_max_usage: int = 0
    memory_failcnt: int = 0
    memory_rss: int = 0
    memory_cache: int = 0
    memory_total_inactive_file: int = 0
    pids_current: int = 0
    pids_limit: int = 0
    #: processes the kernel killed for hitting the memory limit (CRI's OOMKilled comes from it)
    memory_oom_kill: int = 0


@dataclass(frozen=True)
class Route:
    """One IP route of a pod's network: read in the pod netns on the host, applied in a VM guest."""

    dest: str = ""
    gateway: str = ""
    device: str = ""
    source: str = ""
    scope: int = 0
    #: socket.AF_INET or AF_INET6
    family: int = socket.AF_INET
