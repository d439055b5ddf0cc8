"""The persisted record of one vmm pod (``<dir>/<id>/sandbox.json``) and its state enum."""
from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

__all__ = ["PodState", "Pod"]


class PodState(str, enum.Enum):
    CREATED = "created"
    READY = "ready"
    STOPPED = "stopped"


@dataclass
class Pod:
    id: str
    state: PodState = PodState.CREATED
    netns: str = ""
    #: the CRI PodSandboxConfig as decoded JSON (sent to the guest in SetupSandbox)
    config: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    exited_at: str = ""
    exit_status: int = 0
    vcpus: int = 0
    memory_mb: int = 0
    debug: bool = False
    #: the hypervisor's record (pids) for re-attaching
    vm: dict[str, Any] = field(default_factory=dict)
    network: Optional[dict[str, Any]] = None
    cgroup: str = ""
    cgroup_owned_depth: int = 0
    #: accepted ``extensions.tasks`` list (JSON)
    tasks: str = ""
    #: start-up breakdown in milliseconds (spawn, agent, setup)
    timings: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Pod":
        pod = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        pod.state = PodState(pod.state)
        return pod
