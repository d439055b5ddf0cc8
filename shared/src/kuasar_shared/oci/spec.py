"""Helpers that adapt an engine-written OCI runtime spec (``config.json``) before the runtime sees it.

Engines build container specs that name the pod's namespaces as ``/proc/<pod pid>/ns/<type>`` and
carry settings that are wrong inside a shared pod (a ``hostname`` that would rename the whole pod's
UTS namespace, an ``oomScoreAdj`` below what this process may set). Sandbox types fix those here,
on plain dicts, and write the result back atomically.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Optional

from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_shared.statefiles import write_json_atomic

__all__ = ["CONFIG_NAME", "NAMESPACE_TYPES", "load_spec", "save_spec", "rootfs_path",
           "namespace_path", "set_namespace_path", "replace_proc_ns_paths", "drop_hostname_if_shared_uts",
           "set_cgroups_path", "clamp_oom_score_adj", "own_oom_score_adj", "has_own_pid_namespace"]

CONFIG_NAME = "config.json"
#: OCI namespace type -> the /proc/<pid>/ns file name
NAMESPACE_TYPES = {"pid": "pid", "network": "net", "ipc": "ipc", "uts": "uts", "mount": "mnt",
                   "user": "user", "cgroup": "cgroup", "time": "time"}
_PROC_NS = re.compile(r"^/proc/(\d+)/ns/([a-z_]+)$")


def load_spec(bundle: str) -> dict[str, Any]:
    """Read ``<bundle>/config.json``.

    :raise NotFound: when the file does not exist.
    :raise InvalidArgument: when it is not a JSON object.
    """
    path = os.path.join(bundle, CONFIG_NAME)
    try:
        with open(path, "rb") as handle:
            spec = json.load(handle)
    except FileNotFoundError as err:
        raise NotFound(f"no OCI spec at {path}") from err
    except ValueError as err:
        raise InvalidArgument(f"OCI spec {path} is not valid JSON: {err}") from err
    if not isinstance(spec, dict):
        raise InvalidArgument(f"OCI spec {path} is not a JSON object")
    return spec


def save_spec(bundle: str, spec: Mapping[str, Any]) -> None:
    """Write ``<bundle>/config.json`` atomically, without fsync: the runtime reads it right away, and no
    container outlives a machine crash that could lose it (containerd writes its bundles the same way).
    The fsyncs cost ~1 ms of every container start on a disk-backed bundle."""
    write_json_atomic(os.path.join(bundle, CONFIG_NAME), spec, durable=False)


def rootfs_path(bundle: str, spec: Mapping[str, Any]) -> str:
    """Absolute path of the container's root filesystem (``root.path``, default ``rootfs``)."""
    root = spec.get("root") or {}
    path = str(root.get("path") or "rootfs")
    return path if os.path.isabs(path) else os.path.join(bundle, path)


def _namespaces(spec: dict[str, Any]) -> list[dict[str, Any]]:
    linux = spec.setdefault("linux", {})
    namespaces = linux.setdefault("namespaces", [])
    if not isinstance(namespaces, list):
        raise InvalidArgument("OCI spec linux.namespaces is not a list")
    return namespaces


def namespace_path(spec: dict[str, Any], ns_type: str) -> Optional[str]:
    """The path a namespace entry joins; ``""`` for a new namespace, None when there is no entry."""
    for entry in _namespaces(spec):
        if entry.get("type") == ns_type:
            return str(entry.get("path") or "")
    return None


def set_namespace_path(spec: dict[str, Any], ns_type: str, path: str) -> None:
    """Make the container join ``path`` for ``ns_type`` (adding the entry when missing)."""
    for entry in _namespaces(spec):
        if entry.get("type") == ns_type:
            entry["path"] = path
            return
    _namespaces(spec).append({"type": ns_type, "path": path})


def replace_proc_ns_paths(spec: dict[str, Any], pid: int, paths: Mapping[str, str]) -> list[str]:
    """Rewrite every ``/proc/<pid>/ns/<file>`` namespace path to ``paths[<oci type>]``.

    ``pid`` is the pod pid the engine used (0 when the pod reported none). Entries whose type has
    no replacement in ``paths`` are left as they are. Returns the rewritten namespace types.
    """
    done = []
    for entry in _namespaces(spec):
        match = _PROC_NS.match(str(entry.get("path") or ""))
        ns_type = str(entry.get("type"))
        if match and int(match.group(1)) == pid and ns_type in paths:
            entry["path"] = paths[ns_type]
            done.append(ns_type)
    return done


def has_own_pid_namespace(spec: dict[str, Any]) -> bool:
    """True when the spec asks for a new PID namespace (an entry of type ``pid`` without a path).

    Without one, the container's processes outlive its init (they share the pod's or the host's
    PID namespace), so whoever reports the init's exit must kill them.
    """
    return namespace_path(spec, "pid") == ""


def drop_hostname_if_shared_uts(spec: dict[str, Any]) -> bool:
    """Remove ``hostname`` when the container joins an existing UTS namespace.

    Otherwise the runtime would set it and rename every container of the pod. Returns True when
    the hostname was dropped.
    """
    if namespace_path(spec, "uts") and "hostname" in spec:
        del spec["hostname"]
        return True
    return False


def set_cgroups_path(spec: dict[str, Any], path: str) -> None:
    """Set ``linux.cgroupsPath`` (cgroupfs form ``/parent/leaf``)."""
    spec.setdefault("linux", {})["cgroupsPath"] = path


def own_oom_score_adj() -> int:
    """This process's oom_score_adj: the lowest value its children may get without CAP_SYS_RESOURCE."""
    with open("/proc/self/oom_score_adj") as handle:
        return int(handle.read().strip())


def clamp_oom_score_adj(process: dict[str, Any], floor: Optional[int] = None) -> bool:
    """Raise ``oomScoreAdj`` of an OCI Process object to at least ``floor`` (default: our own).

    Asking the runtime for a lower value fails when the caller lacks CAP_SYS_RESOURCE. Returns True
    when the value was changed.
    """
    if "oomScoreAdj" not in process:
        return False
    minimum = own_oom_score_adj() if floor is None else floor
    if int(process["oomScoreAdj"]) < minimum:
        process["oomScoreAdj"] = minimum
        return True
    return False
