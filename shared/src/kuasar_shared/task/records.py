"""The per-container record a task server keeps in memory and in ``<dir>/<id>.json``.

A record holds what a restarted task server needs to re-adopt a container: bundle, runtime
invocation (binary, root, global options), the init and exec pids with their start times (a pid
alone may be reused), states and exit statuses. Exit futures live only in memory and are rebuilt
on adoption. Used by :mod:`kuasar_shared.oci.task` for every OCI runtime (runc, runsc...) and,
extended, by task servers that run no OCI runtime (wasm).
"""
from __future__ import annotations

import asyncio
import os
import shutil
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any, Generic, Optional, Type, TypeVar

from kuasar_shared.errors import NotFound
from kuasar_shared.statefiles import read_json, write_json_atomic
from kuasar_shared.values import ExitInfo, ProcessState, Stdio, TaskStatus

__all__ = ["Proc", "ContainerRecord", "Container", "ContainerStore"]

C = TypeVar("C", bound="ContainerRecord")


@dataclass
class Proc:
    """One process of a container: the init (``exec_id == ""``) or an exec."""

    exec_id: str
    pid: int = 0
    start_time: Optional[int] = None
    status: TaskStatus = TaskStatus.CREATED
    exit_status: int = 0
    exited_at: str = ""
    stdio: dict[str, Any] = field(default_factory=dict)
    #: OCI Process JSON of an exec (None for the init)
    spec: Optional[dict[str, Any]] = None
    #: pid inside the runtime's own pid namespace, when the runtime reports one (runsc execs)
    runtime_pid: int = 0
    #: last signal this server sent (used as the exit reason of an adopted process)
    signal: int = 0
    exit_future: Optional["asyncio.Future[None]"] = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"exec_id": self.exec_id, "pid": self.pid, "start_time": self.start_time,
                "status": int(self.status), "exit_status": self.exit_status, "exited_at": self.exited_at,
                "stdio": dict(self.stdio), "spec": self.spec, "signal": self.signal,
                "runtime_pid": self.runtime_pid}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Proc":
        proc = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        proc.status = TaskStatus(proc.status)
        return proc

    def future(self) -> "asyncio.Future[None]":
        """The future resolved when this process has exited (created on first use)."""
        if self.exit_future is None:
            self.exit_future = asyncio.get_running_loop().create_future()
            if self.status is TaskStatus.STOPPED:
                self.exit_future.set_result(None)
        return self.exit_future

    def exited(self, status: int, at: datetime) -> None:
        self.status, self.exit_status, self.exited_at = TaskStatus.STOPPED, status, at.isoformat()
        fut = self.future()
        if not fut.done():
            fut.set_result(None)

    def exit_info(self) -> ExitInfo:
        return ExitInfo(pid=self.pid, exit_status=self.exit_status,
                        exited_at=datetime.fromisoformat(self.exited_at) if self.exited_at else None)

    def stdio_value(self) -> Stdio:
        return Stdio(**self.stdio)


@dataclass
class ContainerRecord:
    """What every task server records about a container: where it lives and its processes.

    Subclasses add their own scalar fields; :meth:`to_json` / :meth:`from_json` handle them
    generically (tuples are stored as lists).
    """

    id: str
    bundle: str
    namespace: str = ""
    sandbox_id: str = ""
    rootfs: str = ""
    #: number of request rootfs mounts this server mounted on ``rootfs``
    mounted: int = 0
    init: Proc = field(default_factory=lambda: Proc(exec_id=""))
    execs: dict[str, Proc] = field(default_factory=dict)

    def proc(self, exec_id: str) -> Proc:
        if not exec_id:
            return self.init
        try:
            return self.execs[exec_id]
        except KeyError:
            raise NotFound(f"process {exec_id} of container {self.id} not found") from None

    def procs(self) -> list[Proc]:
        return [self.init, *self.execs.values()]

    def state(self, exec_id: str) -> ProcessState:
        proc = self.proc(exec_id)
        return ProcessState(id=self.id, exec_id=exec_id, bundle=self.bundle, pid=proc.pid,
                            status=proc.status, stdio=proc.stdio_value(),
                            exit_status=proc.exit_status, exited_at=proc.exit_info().exited_at)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "init":
                value = value.to_json()
            elif f.name == "execs":
                value = {k: v.to_json() for k, v in value.items()}
            elif isinstance(value, tuple):
                value = list(value)
            data[f.name] = value
        return data

    @classmethod
    def from_json(cls: Type[C], data: dict[str, Any]) -> C:
        kwargs: dict[str, Any] = {"id": str(data["id"]), "bundle": str(data["bundle"]),
                                  "init": Proc.from_json(data["init"]),
                                  "execs": {k: Proc.from_json(v) for k, v in dict(data.get("execs", {})).items()}}
        for f in fields(cls):
            if f.name in kwargs or f.name not in data:
                continue
            value = data[f.name]
            if isinstance(f.default, tuple):
                value = tuple(str(a) for a in value)
            elif f.default is not MISSING and f.default is not None:
                value = type(f.default)(value)  # str / int fields, as their defaults say
            kwargs[f.name] = value
        return cls(**kwargs)


@dataclass
class Container(ContainerRecord):
    """A container driven through an OCI runtime CLI: how the runtime is invoked."""

    binary: str = "runc"
    root: str = ""
    #: runtime options placed before every sub-command (``--platform=ptrace``...)
    global_args: tuple[str, ...] = ()


class ContainerStore(Generic[C]):
    """``<dir>/<id>.json`` records plus ``<dir>/<id>/`` work directories (pid files, specs)."""

    def __init__(self, directory: str, record_type: Type[C]) -> None:
        self.directory = directory
        self.record_type = record_type
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def work_dir(self, container_id: str) -> str:
        path = os.path.join(self.directory, container_id)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def save(self, container: C) -> None:
        """Atomically, not durably (no fsync): the record describes processes that a reboot ends, as
        :meth:`kuasar_shared.sandbox.pods.PodTable.save` explains for pods."""
        write_json_atomic(os.path.join(self.directory, container.id + ".json"), container.to_json(),
                          durable=False)

    def load(self, path: str) -> C:
        return self.record_type.from_json(read_json(path))

    def paths(self) -> list[str]:
        return sorted(os.path.join(self.directory, name) for name in os.listdir(self.directory)
                      if name.endswith(".json") and not name.startswith("."))

    def remove(self, container_id: str) -> None:
        try:
            os.unlink(os.path.join(self.directory, container_id + ".json"))
        except FileNotFoundError:
            pass
        shutil.rmtree(os.path.join(self.directory, container_id), ignore_errors=True)
