"""The one interface every sandbox type implements: :class:`Sandboxer`, plus the plain data it sees.

The Sandbox API controller (:mod:`kuasar_shared.sandbox.controller`) validates every request,
converts it into the dataclasses below and calls one :class:`Sandboxer` method per RPC. Sandboxers
never see protobuf or gRPC: they raise :mod:`kuasar_shared.errors` types (``NotFound`` for an
unknown id, ``AlreadyExists`` for a duplicate create, ``FailedPrecondition`` for a wrong state) and
the controller maps them once. Ids reaching a sandboxer have already passed
:func:`kuasar_shared.ids.validate_id`, so they are safe to join into paths.

The contract follows Kuasar's ``containerd-sandbox`` crate (create, start, stop, wait, status,
shutdown, update) with containerd's Metrics added and the ``extensions.tasks`` update delivered
as a validated diff (:class:`TaskDiff`).
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from kuasar_shared.errors import Unimplemented
from kuasar_shared.values import CgroupStats, Mount

__all__ = ["CreateSandbox", "SandboxStatus", "ExitStatus", "ProcessResource", "TaskResource",
           "TaskResources", "TaskDiff", "Sandboxer", "TASK_API_VERSION"]

#: The task API version every sandboxer answers: containerd 2.x then calls containerd.task.v3.Task.
TASK_API_VERSION = 3

# CRI runtime.v1.NamespaceMode names as rendered by MessageToDict; POD (0) is the proto default
# and therefore absent from the rendered dict.
_NS_POD = "POD"
_NS_NODE = "NODE"


@dataclass(frozen=True)
class CreateSandbox:
    """A ControllerCreateRequest, decoded.

    ``config`` is the CRI ``runtime.v1.PodSandboxConfig`` carried in ``options`` rendered with
    ``json_format.MessageToDict(preserving_proto_field_name=True)``: snake_case keys, enums by
    name, int64 as strings, defaults omitted; ``{}`` when the engine sent no options.
    ``config_raw`` keeps the exact protobuf bytes for sandboxers that persist or forward them.
    ``extensions`` maps each ``sandbox.extensions`` key to ``(type_url, value bytes)``.
    """

    id: str
    netns_path: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    config_raw: bytes = b""
    annotations: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    sandboxer: str = ""
    rootfs: tuple[Mount, ...] = ()
    extensions: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    created_at: Optional[datetime] = None

    def _namespace_mode(self, kind: str) -> str:
        options = self.config.get("linux", {}).get("security_context", {}).get("namespace_options", {})
        return str(options.get(kind, _NS_POD))

    @property
    def host_network(self) -> bool:
        """True when the pod uses the node's network namespace (``namespace_options.network = NODE``)."""
        return self._namespace_mode("network") == _NS_NODE

    @property
    def shared_pid(self) -> bool:
        """True when the pod's containers share one PID namespace (``namespace_options.pid = POD``)."""
        return self._namespace_mode("pid") == _NS_POD

    @property
    def host_pid(self) -> bool:
        """True when the pod uses the node's PID namespace (``namespace_options.pid = NODE``)."""
        return self._namespace_mode("pid") == _NS_NODE

    @property
    def host_ipc(self) -> bool:
        """True when the pod uses the node's IPC namespace (``namespace_options.ipc = NODE``)."""
        return self._namespace_mode("ipc") == _NS_NODE

    @property
    def hostname(self) -> str:
        return str(self.config.get("hostname", ""))

    @property
    def sysctls(self) -> dict[str, str]:
        """The pod's ``linux.sysctls`` (name -> value), unvalidated."""
        return {str(k): str(v) for k, v in dict(self.config.get("linux", {}).get("sysctls", {})).items()}

    @property
    def dns_config(self) -> Optional[dict[str, list[str]]]:
        """The pod's ``dns_config`` (servers, searches, options), None when the engine sent none."""
        dns = self.config.get("dns_config")
        if dns is None:
            return None
        return {key: [str(v) for v in dns.get(key, [])] for key in ("servers", "searches", "options")}

    @property
    def cgroup_parent(self) -> str:
        return str(self.config.get("linux", {}).get("cgroup_parent", ""))


@dataclass(frozen=True)
class ExitStatus:
    """How a sandbox ended (ControllerWaitResponse)."""

    exit_status: int
    exited_at: Optional[datetime]


@dataclass(frozen=True)
class ProcessResource:
    """One exec process announced through ``extensions.tasks`` (OCI Process JSON in ``spec``)."""

    exec_id: str
    spec: dict[str, Any] = field(default_factory=dict)
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class TaskResource:
    """One container announced through ``extensions.tasks``: OCI spec, rootfs, stdio, execs."""

    task_id: str
    spec: dict[str, Any] = field(default_factory=dict)
    rootfs: tuple[Mount, ...] = ()
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    processes: tuple[ProcessResource, ...] = ()

    def process(self, exec_id: str) -> Optional[ProcessResource]:
        for proc in self.processes:
            if proc.exec_id == exec_id:
                return proc
        return None


@dataclass(frozen=True)
class TaskResources:
    """The full desired list of a pod's containers (Kuasar's ``extensions.tasks`` JSON)."""

    tasks: tuple[TaskResource, ...] = ()

    def task(self, task_id: str) -> Optional[TaskResource]:
        for task in self.tasks:
            if task.task_id == task_id:
                return task
        return None


@dataclass(frozen=True)
class TaskDiff:
    """What changed between the stored and the new ``extensions.tasks`` list.

    ``added_processes`` / ``removed_processes`` only cover tasks present in both lists: the
    processes of an added or removed task come and go with the task itself.
    """

    old: TaskResources
    new: TaskResources
    added_tasks: tuple[TaskResource, ...] = ()
    removed_tasks: tuple[TaskResource, ...] = ()
    added_processes: tuple[tuple[str, ProcessResource], ...] = ()
    removed_processes: tuple[tuple[str, ProcessResource], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added_tasks or self.removed_tasks or self.added_processes
                    or self.removed_processes)


@dataclass(frozen=True)
class SandboxStatus:
    """What the engine is told about a pod (ControllerStartResponse / ControllerStatusResponse).

    ``address`` is the task API address (``ttrpc+unix:///abs/path.sock``); ``tasks`` is the
    ``extensions.tasks`` list the sandboxer last accepted (the controller diffs updates against it).
    """

    id: str
    ready: bool
    pid: int = 0
    created_at: Optional[datetime] = None
    exited_at: Optional[datetime] = None
    address: str = ""
    version: int = TASK_API_VERSION
    info: dict[str, str] = field(default_factory=dict)
    tasks: TaskResources = TaskResources()


class Sandboxer(abc.ABC):
    """One implementation per sandbox type; one instance serves every pod of that type.

    Lifecycle of a pod: ``create`` -> ``start`` (ready) -> ``stop`` (not ready, ``wait`` returns)
    -> ``shutdown`` (gone: every later call for the id raises NotFound). Wrong-state calls raise
    FailedPrecondition (e.g. ``start`` twice, ``start`` after ``stop``). All methods may be called
    concurrently for different pods; ``wait`` may be pending while any other call runs and is
    cancelled when the engine goes away, so it must not hold locks while waiting.
    """

    @abc.abstractmethod
    async def create(self, req: CreateSandbox) -> None:
        """Prepare a pod (state on disk, nothing running yet).

        :raise AlreadyExists: when the id is already known.
        :raise InvalidArgument: when the request cannot describe a pod of this type.
        On failure nothing of the pod may remain.
        """

    @abc.abstractmethod
    async def start(self, id: str) -> SandboxStatus:
        """Start a created pod and return its status, which must be ready.

        :raise NotFound: unknown id. :raise FailedPrecondition: the pod is not in state created.
        """

    @abc.abstractmethod
    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        """Stop the pod's processes; ``timeout_secs`` None (the engine sent 0) means stop at once.

        Stopping a stopped pod succeeds. :raise NotFound: unknown id.
        """

    @abc.abstractmethod
    async def wait(self, id: str) -> ExitStatus:
        """Block until the pod has stopped. :raise NotFound: unknown id."""

    @abc.abstractmethod
    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        """:raise NotFound: unknown id (also right after ``shutdown``)."""

    @abc.abstractmethod
    async def shutdown(self, id: str) -> None:
        """Stop the pod if needed and remove everything of it (processes, mounts, state dir).

        :raise NotFound: unknown id (the controller answers OK then: shutdown is idempotent).
        """

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        """The pod's cgroup statistics, or None when this sandbox type has none.

        :raise NotFound: unknown id.
        """
        await self.status(id)
        return None

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        """Apply a change of the ``extensions.tasks`` list; afterwards ``status(id).tasks`` must
        return ``diff.new``. Sandbox types whose task server takes everything from the task Create
        only need to persist ``diff.new``.

        :raise NotFound: unknown id.
        """
        raise Unimplemented("sandbox %s: this sandbox type does not accept extensions.tasks" % id)

    async def recover(self) -> None:
        """Called once at start-up before serving: re-adopt every pod found in the state dir and
        clean up those that cannot be recovered."""

    async def close(self) -> None:
        """Release what the sandboxer itself holds (tasks, connections); pods keep running."""
