"""Point a container's spec at its pod's pinned namespaces.

runc-sandboxer pins each pod's namespaces at ``<pods dir>/<pod id>/ns/<file>``. Engines write
``/proc/<pod pid>/ns/<file>`` into container specs, and ``/proc/0/ns/<file>`` when the pod reported
pid 0; both are rewritten to the pinned files, which also stay valid if the pid is ever reused.
The pod is found through the CRI annotation ``io.kubernetes.cri.sandbox-id`` or containerd's
``<bundle>/sandbox`` file. A spec without ``linux.cgroupsPath`` is put below the pod's cgroup
parent (from the pod's ``sandbox.json``), as containerd does for CRI containers.
"""
from __future__ import annotations

import os
import re
from typing import Any

from kuasar_shared.oci import NAMESPACE_TYPES, replace_proc_ns_paths
from kuasar_shared.oci.pod import SANDBOX_ID_ANNOTATION, pod_cgroup_parent, sandbox_id_of

__all__ = ["SANDBOX_ID_ANNOTATION", "sandbox_id_of", "join_pod_namespaces", "default_cgroups_path"]

_PROC_NS = re.compile(r"^/proc/(\d+)/ns/")


def _same_file(a: str, b: str) -> bool:
    try:
        first, second = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


def join_pod_namespaces(spec: dict[str, Any], pods_dir: str, sandbox_id: str) -> list[str]:
    """Rewrite the spec's pod namespace paths to the pinned files; return the rewritten types."""
    if not pods_dir or not sandbox_id:
        return []
    ns_dir = os.path.join(pods_dir, sandbox_id, "ns")
    pinned = {oci: os.path.join(ns_dir, name) for oci, name in NAMESPACE_TYPES.items()
              if os.path.exists(os.path.join(ns_dir, name))}
    if not pinned:
        return []
    done = replace_proc_ns_paths(spec, 0, pinned)
    for entry in (spec.get("linux") or {}).get("namespaces") or []:
        path, ns_type = str(entry.get("path") or ""), str(entry.get("type"))
        match = _PROC_NS.match(path)
        if match and ns_type in pinned and _same_file(path, pinned[ns_type]):
            done += replace_proc_ns_paths(spec, int(match.group(1)), {ns_type: pinned[ns_type]})
    return done


def default_cgroups_path(spec: dict[str, Any], pods_dir: str, sandbox_id: str, container_id: str) -> str:
    """``<pod cgroup parent>/<container id>`` when the spec has no cgroupsPath and the pod has a
    cgroup parent; ``""`` otherwise."""
    if (spec.get("linux") or {}).get("cgroupsPath"):
        return ""
    parent = pod_cgroup_parent(pods_dir, sandbox_id)
    return "/" + "/".join(p for p in (parent.strip("/"), container_id) if p) if parent else ""
