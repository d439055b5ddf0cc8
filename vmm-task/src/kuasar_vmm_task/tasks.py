"""GuestTaskBackend: the Task API inside the VM, running containers with the guest's runc.

The host relay forwards the engine's task calls; :class:`~kuasar_shared.oci.task.OciTaskBackend`
serves them as it does on a host, with the guest-specific parts here. The bundle is always
``/run/kuasar/state/<cid>`` (the host wrote config.json with guest paths and mounted the rootfs into
the share), whatever path the call carries; rootfs mounts in the call were already done on the host
and are ignored. The spec is adapted to the guest: no network namespace (the pod's NICs are the
VM's), IPC/UTS (and PID when the pod shares it) joined at the namespaces SetupSandbox pinned,
cgroups below ``/kuasar``. Each container's memory cgroup is watched for OOM kills. Stdio is
streaming only (the relay bridges host FIFOs). vmm-task is PID 1, so every container process is
reaped by it. The records live on the guest's /run tmpfs and end with the VM; this VM runs one
pod, so Shutdown covers every container.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict

from kuasar_shared.ids import validate_id
from kuasar_shared.io import StreamingHub
from kuasar_shared.oci import clamp_oom_score_adj, drop_hostname_if_shared_uts
from kuasar_shared.oci.container import Container
from kuasar_shared.oci.task import OciHooks, OciTaskBackend, Placement
from kuasar_shared.task.backend import CreateTask

from kuasar_vmm_task.boot import SHARE_DIR
from kuasar_vmm_task.events import EventQueue
from kuasar_vmm_task.pod import PodNamespaces

__all__ = ["GuestTaskBackend", "GuestHooks", "adapt_spec"]

log = logging.getLogger(__name__)

_POD_NS = ("ipc", "uts", "pid")


def adapt_spec(spec: Dict[str, Any], container_id: str, pod_ns: PodNamespaces) -> Dict[str, Any]:
    """Make a host-written spec run in this guest (see the module docstring); returns ``spec``."""
    linux = spec.setdefault("linux", {})
    adapted = []
    for entry in linux.get("namespaces") or []:
        ns_type = entry.get("type")
        if ns_type == "network":
            continue
        if ns_type in _POD_NS:
            pinned = pod_ns.path(ns_type)
            if pinned:
                entry = {"type": ns_type, "path": pinned}
            elif entry.get("path"):
                entry = {"type": ns_type}  # a host /proc path means nothing here: a new namespace
        adapted.append(entry)
    linux["namespaces"] = adapted
    if not linux.get("cgroupsPath"):
        linux["cgroupsPath"] = f"/kuasar/{container_id}"
    drop_hostname_if_shared_uts(spec)
    clamp_oom_score_adj(spec.setdefault("process", {}))
    return spec


class GuestHooks(OciHooks):
    """runc in the guest: specs join the pinned pod namespaces; OOMs of each container are reported."""

    name = "vmm-task"

    def __init__(self, pod_ns: PodNamespaces, events: EventQueue, runc: str, runc_root: str) -> None:
        self.pod_ns = pod_ns
        self.events = events
        self.runc = runc
        self.runc_root = runc_root

    def place(self, req: CreateTask, spec: Dict[str, Any], namespace: str) -> Placement:
        adapt_spec(spec, req.id, self.pod_ns)
        return Placement(sandbox_id="", binary=self.runc, root=self.runc_root)

    def created(self, container_id: str, spec: Dict[str, Any]) -> None:
        self.events.watch_oom(container_id, spec["linux"]["cgroupsPath"])

    def removed(self, container_id: str) -> None:
        self.events.unwatch(container_id)


class GuestTaskBackend(OciTaskBackend):
    """Every container of the pod this VM runs."""

    def __init__(self, hub: StreamingHub, pod_ns: PodNamespaces, events: EventQueue,
                 share: str = SHARE_DIR, runc: str = "runc", runc_root: str = "/run/runc") -> None:
        super().__init__(os.path.join(runc_root, "kuasar-work"), GuestHooks(pod_ns, events, runc, runc_root),
                         hub=hub)
        self.share = share

    async def create(self, req: CreateTask) -> int:
        validate_id(req.id, "container")
        if req.rootfs:
            log.debug("container %s: rootfs mounts were made by the host; ignored", req.id)
        return await super().create(dataclasses.replace(req, bundle=os.path.join(self.share, req.id), rootfs=()))

    def _belongs(self, container: Container, id: str) -> bool:
        return True
