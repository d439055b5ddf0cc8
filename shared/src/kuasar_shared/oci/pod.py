"""Find a container's pod from its OCI spec, and the pod's cgroup from the sandboxer's record.

Every task server that serves many pods needs the same two answers at task Create: which pod a
container belongs to (CRI annotation ``io.kubernetes.cri.sandbox-id``, else containerd's
``<bundle>/sandbox`` file) and, for a spec without ``linux.cgroupsPath``, where below the pod's
cgroup the container goes (``cgroup_parent`` of ``<pods dir>/<pod id>/sandbox.json``). Task servers
whose pods live on the host also mount the pod's ``hostname``, ``hosts``, ``resolv.conf`` and
``/dev/shm`` (written by :mod:`kuasar_shared.sandbox.podfiles`) into its containers.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ids import is_valid_id
from kuasar_shared.statefiles import CorruptState, read_json

__all__ = ["SANDBOX_ID_ANNOTATION", "sandbox_id_of", "pod_cgroup_parent", "container_cgroups_path",
           "add_pod_mounts"]

SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"
#: container path -> file in the pod directory (the names kuasar_shared.sandbox.podfiles writes)
_POD_FILES = {"/etc/hostname": "hostname", "/etc/hosts": "hosts", "/etc/resolv.conf": "resolv.conf"}
_DEV_SHM = "/dev/shm"


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


def add_pod_mounts(spec: dict[str, Any], pod_dir: str) -> list[str]:
    """Bind the pod's files into a container spec, as containerd does for its own pods.

    ``/etc/hostname``, ``/etc/hosts`` and ``/etc/resolv.conf`` are added when the pod directory
    has them and the spec mounts nothing there (read-only with a read-only rootfs). The spec's
    ``/dev/shm`` tmpfs is replaced by the pod's shared one when ``<pod_dir>/shm`` exists; a
    ``/dev/shm`` bind (the node's, for host IPC pods) is left alone. Returns the container paths
    that were mounted.

    :raise InvalidArgument: ``mounts`` is not a list.
    """
    mounts = spec.setdefault("mounts", [])
    if not isinstance(mounts, list):
        raise InvalidArgument("OCI spec mounts is not a list")
    taken = {os.path.normpath(str(m.get("destination", ""))) for m in mounts if isinstance(m, dict)}
    readonly = bool((spec.get("root") or {}).get("readonly"))
    done = []
    for destination, name in _POD_FILES.items():
        source = os.path.join(pod_dir, name)
        if destination in taken or not os.path.isfile(source):
            continue
        mounts.append({"destination": destination, "type": "bind", "source": source,
                       "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})
        done.append(destination)
    shm = os.path.join(pod_dir, "shm")
    if os.path.ismount(shm):
        for index, entry in enumerate(mounts):
            if (isinstance(entry, dict) and os.path.normpath(str(entry.get("destination", ""))) == _DEV_SHM
                    and entry.get("type") == "tmpfs"):
                mounts[index] = {"destination": _DEV_SHM, "type": "bind", "source": shm,
                                 "options": ["rbind", "rprivate", "rw"]}
                done.append(_DEV_SHM)
    return done
