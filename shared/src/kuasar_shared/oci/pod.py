"""Find a container's pod from its OCI spec, and the pod's cgroup from the sandboxer's record.

Every task server that serves many pods needs the same two answers at task Create: which pod a
container belongs to (CRI annotation ``io.kubernetes.cri.sandbox-id``, else containerd's
``<bundle>/sandbox`` file) and, for a spec without ``linux.cgroupsPath``, where below the pod's
cgroup the container goes (``cgroup_parent`` of ``<pods dir>/<pod id>/sandbox.json``).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from kuasar_shared.ids import is_valid_id
from kuasar_shared.store import CorruptState, read_json

__all__ = ["SANDBOX_ID_ANNOTATION", "sandbox_id_of", "pod_cgroup_parent", "container_cgroups_path"]

SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"


def sandbox_id_of(spec: Mapping[str, Any], bundle: str) -> str:
    """The pod id of a container spec, or ``""`` when it names none (or an invalid one)."""
    value = str((spec.get("annotations") or {}).get(SANDBOX_ID_ANNOTATION, ""))
    if not value:
        try:
            with open(os.path.join(bundle, "sandbox")) as handle:
                value = handle.read().strip()
        except OSError:
            value = ""
    return value if is_valid_id(value) else ""


def pod_cgroup_parent(pods_dir: str, sandbox_id: str) -> str:
    """``cgroup_parent`` recorded in ``<pods_dir>/<sandbox_id>/sandbox.json``; ``""`` when unknown."""
    if not pods_dir or not sandbox_id:
        return ""
    try:
        record = read_json(os.path.join(pods_dir, sandbox_id, "sandbox.json"))
    except (OSError, CorruptState):
        return ""
    return str(record.get("cgroup_parent") or "") if isinstance(record, dict) else ""


def container_cgroups_path(spec: Mapping[str, Any], pods_dir: str, sandbox_id: str, container_id: str) -> str:
    """The spec's ``linux.cgroupsPath``, else ``/<pod cgroup parent>/<container id>``, else ``""``."""
    explicit = str((spec.get("linux") or {}).get("cgroupsPath") or "")
    if explicit:
        return explicit
    parent = pod_cgroup_parent(pods_dir, sandbox_id).strip("/")
    return "/" + parent + "/" + container_id if parent else ""
