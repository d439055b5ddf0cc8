"""The persisted record of one quark pod (``<dir>/<id>/sandbox.json``), shared with the task server.

Besides the pod's lifecycle the record names how the pod's application kernel is invoked
(``runtime``: binary, ``--root`` and global flags for runsc): quark-task reads it at task Create
so that every container joins its pod's sandbox with exactly the flags the sandbox was made with.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from kuasar_shared.sandbox.pods import PodRecord, PodState

__all__ = ["PodState", "Pod", "RuntimeInvocation", "RECORD_NAME"]

RECORD_NAME = "sandbox.json"


@dataclass
class RuntimeInvocation:
    """How the pod's OCI runtime is called (empty for kernels that run their own task server)."""

    binary: str = ""
    root: str = ""
    global_args: list[str] = field(default_factory=list)


@dataclass
class Pod(PodRecord):
    kernel: str = "runsc"
    hostname: str = ""
    #: the pod asked for the node's network (CRI ``namespace_options.network = NODE``)
    host_network: bool = False
    #: the application kernel's host process (runsc: the Sentry; quark: the ``quark sandbox``)
    pid: int = 0
    pid_start: Optional[int] = None
    #: task API address; ``""``: the shared task server
    address: str = ""
    runtime: RuntimeInvocation = field(default_factory=RuntimeInvocation)
    #: Start began and has not finished: a pod still CREATED with this set after a restart was given
    #: up by the engine (its Start call failed) and is rolled back
    starting: bool = False

    def __repr__(self) -> str:
        return f"Pod(id={self.id!r}, state={self.state.value}, kernel={self.kernel})"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Pod":
        pod = super().from_json(data)
        assert isinstance(pod, Pod)
        runtime = pod.runtime if isinstance(pod.runtime, dict) else {}
        pod.runtime = RuntimeInvocation(binary=str(runtime.get("binary", "")), root=str(runtime.get("root", "")),
                                        global_args=[str(a) for a in runtime.get("global_args", [])])
        return pod
