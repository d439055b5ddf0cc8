"""The persisted record of one vmm pod (``<dir>/<id>/sandbox.json``): the common pod record plus
what a VM pod needs to be re-attached and to answer Status."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, cast

from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.sandbox.pods import PodRecord, check_create

__all__ = ["VmmPod", "DEBUG_ANNOTATION"]

#: a pod annotation (request or PodSandboxConfig) "true" boots the guest with ``task.debug``
DEBUG_ANNOTATION = "io.kuasar.vmm.debug"


@dataclass
class VmmPod(PodRecord):
    #: the CRI PodSandboxConfig as decoded JSON (sent to the guest in SetupSandbox)
    config: dict[str, Any] = field(default_factory=dict)
    vcpus: int = 0
    memory_mb: int = 0
    debug: bool = False
    #: the hypervisor's record (pids) for re-attaching
    vm: dict[str, Any] = field(default_factory=dict)
    network: Optional[dict[str, Any]] = None
    #: start-up breakdown in milliseconds (spawn, qemu, agent, setup)
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def for_request(cls, req: CreateSandbox, vcpus: int, memory_mb: int) -> "VmmPod":
        """A new pod of a Create request, sized ``vcpus`` x ``memory_mb``.

        :raise InvalidArgument: its network namespace does not exist, or it asks for the host's PID namespace.
        """
        created = check_create(req, host_pid_refused_by="a VM")
        annotations = {**(req.config.get("annotations") or {}), **req.annotations}
        return cls(id=req.id, netns="" if req.host_network else req.netns_path, config=req.config,
                   created_at=created, vcpus=vcpus,
                   memory_mb=memory_mb, debug=annotations.get(DEBUG_ANNOTATION, "") == "true")

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "VmmPod":
        """Also reads records of releases that kept the pod's cgroup as ``cgroup`` (a running pod's
        cgroup must still be removed after an upgrade)."""
        if "cgroup" in data and "cgroup_parent" not in data:
            data = {**data, "cgroup_parent": data["cgroup"]}
        return cast(VmmPod, super().from_json(data))
