"""The pod table every sandboxer keeps: records persisted as ``<dir>/<id>/sandbox.json``.

Sandbox types differ in what holds a pod (a namespace holder, a gVisor sandbox, a VM) but not in
the bookkeeping around it: one record per pod with a three-state lifecycle, a lock per pod so calls
on one pod are serialised, an event that releases Wait when the pod stops, the accepted
``extensions.tasks`` list, atomic persistence after every change, and removal of the pod's cgroup
and directory. Subclass :class:`PodRecord` for type-specific fields.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Dict, Generic, Iterator, Optional, Tuple, Type, TypeVar, Union

from kuasar_shared.cgroups import DEFAULT_ROOT, Cgroup, CgroupV2
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KuasarError, NotFound
from kuasar_shared.sandbox.api import CreateSandbox, ExitStatus, TaskDiff, TaskResources
from kuasar_shared.sandbox.tasks_extension import encode_tasks, parse_tasks
from kuasar_shared.statefiles import CorruptState, PodStore
from kuasar_shared.values import CgroupStats

__all__ = ["PodState", "PodRecord", "PodTable", "P", "now", "parse_time", "check_create", "remove_cgroup"]

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


def parse_time(value: str) -> Optional[datetime]:
    return datetime.fromisoformat(value) if value else None


def check_create(req: CreateSandbox, host_pid_refused_by: str = "") -> str:
    """The checks every sandbox type makes of a Create request; returns the pod's creation time to record.

    :param host_pid_refused_by: what in this sandbox type cannot share the node's PID namespace (``"a VM"``);
        empty when the type can.
    :return: the engine's ``created_at``, else now (ISO 8601).
    :raise InvalidArgument: the pod's network namespace does not exist, or it asks for the node's PID
        namespace (``pid: NODE``) and ``host_pid_refused_by`` is set.
    """
    if req.netns_path and not os.path.exists(req.netns_path):
        raise InvalidArgument(f"sandbox {req.id}: network namespace {req.netns_path} does not exist")
    if req.host_pid and host_pid_refused_by:
        raise InvalidArgument(f"sandbox {req.id}: the host PID namespace (pid: NODE) cannot be shared with "
                              f"{host_pid_refused_by}")
    return (req.created_at or datetime.now(timezone.utc)).isoformat()


class PodState(str, enum.Enum):
    CREATED = "created"
    READY = "ready"
    STOPPED = "stopped"


@dataclass
class PodRecord:
    """What every sandbox type persists about a pod; subclasses add their own fields."""

    id: str
    state: PodState = PodState.CREATED
    netns: str = ""
    cgroup_parent: str = ""
    #: how many trailing levels of ``cgroup_parent`` this sandboxer created (removed at shutdown)
    cgroup_owned_depth: int = 0
    created_at: str = ""
    exited_at: str = ""
    exit_status: int = 0
    #: the accepted ``extensions.tasks`` list (JSON)
    tasks: str = ""

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "PodRecord":
        pod = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        pod.state = PodState(pod.state)
        return pod

    @property
    def task_resources(self) -> TaskResources:
        return parse_tasks(self.tasks.encode()) if self.tasks else TaskResources()

    def require(self, state: PodState, action: str) -> None:
        """:raise FailedPrecondition: the pod is not in ``state``."""
        if self.state is not state:
            raise FailedPrecondition(f"sandbox {self.id} cannot {action}: it is {self.state.value}, "
                                     f"not {state.value}")


P = TypeVar("P", bound=PodRecord)


class PodTable(Generic[P]):
    """The pods of one sandboxer ``--dir``, in memory and on disk."""

    def __init__(self, directory: str, record_type: Type[P]) -> None:
        self.store = PodStore(directory)
        self.record_type = record_type
        self._pods: Dict[str, P] = {}
        self._stopped: Dict[str, asyncio.Event] = {}
        self._locks: Dict[str, asyncio.Lock] = {}

    def __contains__(self, sandbox_id: str) -> bool:
        return sandbox_id in self._pods

    def __iter__(self) -> Iterator[P]:
        return iter(list(self._pods.values()))

    def get(self, sandbox_id: str) -> P:
        """:raise NotFound: no such pod."""
        try:
            return self._pods[sandbox_id]
        except KeyError:
            raise NotFound(f"sandbox {sandbox_id} not found") from None

    def find(self, sandbox_id: str) -> Optional[P]:
        return self._pods.get(sandbox_id)

    def lock(self, sandbox_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sandbox_id, asyncio.Lock())

    def pod_dir(self, sandbox_id: str) -> str:
        return self.store.pod_dir(sandbox_id)

    def add(self, pod: P) -> None:
        """Persist a new pod and start tracking it (a failed write leaves no pod directory).

        :raise AlreadyExists: the id is taken.
        """
        if pod.id in self._pods:
            raise AlreadyExists(f"sandbox {pod.id} already exists")
        try:
            self.save(pod)
        except OSError:
            shutil.rmtree(self.pod_dir(pod.id), ignore_errors=True)
            raise
        self._pods[pod.id] = pod

    @staticmethod
    def create_cgroup(pod: P) -> None:
        """Create the pod's ``cgroup_parent`` and record how much of it is ours (the caller saves).

        :raise InvalidArgument: the cgroup cannot be created.
        """
        cgroup = Cgroup.open(pod.cgroup_parent)
        try:
            cgroup.create()
        except OSError as err:
            raise InvalidArgument(f"sandbox {pod.id}: cannot create cgroup {pod.cgroup_parent}: {err}") from err
        pod.cgroup_owned_depth = cgroup.owned_depth

    def adopt(self, pod: P) -> None:
        """Track a pod recovered from disk (Wait returns at once when it is already stopped)."""
        self._pods[pod.id] = pod
        if pod.state is PodState.STOPPED:
            self._event(pod.id).set()

    def save(self, pod: P) -> None:
        """Atomically, not durably: a pod record describes processes, mounts and cgroups that a reboot ends
        (and the state directory is on /run), so it must survive its sandboxer's crash, which the kernel's
        page cache ensures, never a machine crash; runc keeps its own state.json the same way. A record that
        a machine crash did tear is :class:`~kuasar_shared.statefiles.CorruptState`: its pod is cleaned up."""
        self.store.save(pod.id, pod.to_json(), durable=False)

    def _event(self, sandbox_id: str) -> asyncio.Event:
        return self._stopped.setdefault(sandbox_id, asyncio.Event())

    def running(self, pod: P) -> None:
        """The pod became READY (Wait now blocks until :meth:`stopped`)."""
        pod.state = PodState.READY
        self.save(pod)
        self._event(pod.id).clear()

    def stopped(self, pod: P, exit_status: int = 0) -> None:
        """Record the end of a pod (once) and release every Wait."""
        if pod.state is not PodState.STOPPED:
            pod.state, pod.exited_at, pod.exit_status = PodState.STOPPED, now(), exit_status
            self.save(pod)
        self._event(pod.id).set()

    async def wait(self, sandbox_id: str) -> ExitStatus:
        pod = self.get(sandbox_id)
        if pod.state is not PodState.STOPPED:
            await self._event(sandbox_id).wait()
            pod = self.get(sandbox_id)
        return ExitStatus(exit_status=pod.exit_status, exited_at=parse_time(pod.exited_at))

    async def update_tasks(self, sandbox_id: str, diff: TaskDiff) -> None:
        async with self.lock(sandbox_id):
            pod = self.get(sandbox_id)
            pod.tasks = encode_tasks(diff.new).decode()
            self.save(pod)

    def forget(self, sandbox_id: str) -> None:
        """Stop tracking a pod, leaving everything it has in place (another sandboxer owns it now)."""
        self._pods.pop(sandbox_id, None)
        self._stopped.pop(sandbox_id, None)
        self._locks.pop(sandbox_id, None)

    def remove(self, pod: P) -> None:
        """Forget a pod and remove its cgroup and directory (mounts inside are unmounted first)."""
        self.forget(pod.id)
        if pod.cgroup_parent:
            remove_cgroup(pod)
        try:
            self.store.remove(pod.id)
        except KuasarError as err:
            log.error("sandbox %s: cannot remove %s: %s", pod.id, self.store.pod_dir(pod.id), err)

    def load_all(self) -> Iterator[Tuple[str, Union[P, KuasarError, ValueError, TypeError]]]:
        """Every pod directory with its record, or the error that makes it unrecoverable."""
        for sandbox_id in self.store.ids():
            try:
                pod = self.record_type.from_json(self.store.load(sandbox_id))
                if pod.id != sandbox_id:
                    raise ValueError(f"record names pod {pod.id!r}")
            except (CorruptState, NotFound, TypeError, ValueError) as err:
                yield sandbox_id, err
            else:
                yield sandbox_id, pod  # type: ignore[misc]

    def metrics(self, sandbox_id: str) -> Optional[CgroupStats]:
        pod = self.get(sandbox_id)
        if not pod.cgroup_parent:
            return None
        try:
            return Cgroup.open(pod.cgroup_parent).stats()
        except NotFound:
            return None


def remove_cgroup(pod: PodRecord) -> None:
    """Remove the pod's cgroup; on a hybrid v1 host also the copy runc makes in the unified tree."""
    cgroups = [Cgroup.open(pod.cgroup_parent, owned_depth=pod.cgroup_owned_depth)]
    unified = os.path.join(DEFAULT_ROOT, "unified")
    if cgroups[0].version == "v1" and os.path.isdir(unified):
        cgroups.append(CgroupV2(pod.cgroup_parent, root=unified, owned_depth=pod.cgroup_owned_depth))
    for cgroup in cgroups:
        try:
            cgroup.delete()
        except (OSError, KuasarError) as err:
            log.warning("sandbox %s: cannot remove cgroup %r: %s", pod.id, cgroup, err)
