"""The Sandbox API: the :class:`Sandboxer` interface every sandbox type implements, and its gRPC server.

Layers: :mod:`.api` (interface + plain data) <- :mod:`.tasks_extension` (``extensions.tasks`` contract)
<- :mod:`.controller` (gRPC servicer: validate, convert, delegate) <- :mod:`.server`
(unix-socket server). Sandboxers import from here and never touch protobuf. The gRPC server is
imported from :mod:`.server` by the daemons that serve it, so that processes using only the pod
bookkeeping (task servers, the vmm relay) do not load gRPC.
"""
from __future__ import annotations

from kuasar_shared.sandbox.api import (TASK_API_VERSION, CreateSandbox, ExitStatus, ProcessResource,
                                       Sandboxer, SandboxStatus, TaskDiff, TaskResource, TaskResources)
from kuasar_shared.sandbox.tasks_extension import diff, encode_tasks, parse_tasks

__all__ = ["Sandboxer", "CreateSandbox", "SandboxStatus", "ExitStatus", "ProcessResource", "TaskResource",
           "TaskResources", "TaskDiff", "TASK_API_VERSION", "parse_tasks", "encode_tasks", "diff"]
