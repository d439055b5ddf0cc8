"""Check a pod's sysctls and turn them into the ``/proc/sys`` files its holder writes.

A sysctl set for a pod must only change the pod: Kubernetes allows the namespaced ones, those of
the IPC namespace (``kernel.shm*``, ``kernel.msg*``, ``kernel.sem``, ``fs.mqueue.*``) and of the
network namespace (``net.*``), and never for a pod that shares that namespace with the node.
Anything else would change the node itself and is refused, like a malformed name. Names use dots
or slashes as separators (``net.ipv4.ip_forward``, ``net/ipv4/conf/eth0.100/forwarding``): with a
slash anywhere, dots are part of a component, as the kubelet and runc read them.
"""
from __future__ import annotations

import re
from typing import Mapping

from kuasar_shared.errors import InvalidArgument

__all__ = ["sysctl_files"]

_COMPONENT = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_IPC_PREFIXES = ("kernel/shm", "kernel/msg", "kernel/sem", "fs/mqueue/")


def _relative_path(name: str) -> str:
    parts = name.split("/") if "/" in name else name.split(".")
    if not all(_COMPONENT.match(part) and part not in (".", "..") for part in parts):
        raise InvalidArgument(f"invalid sysctl name {name!r}")
    return "/".join(parts)


def sysctl_files(sysctls: Mapping[str, str], host_network: bool, host_ipc: bool) -> dict[str, str]:
    """``/proc/sys/<path>`` -> value for each pod sysctl.

    :raise InvalidArgument: a malformed name or value, a sysctl that is not namespaced, or one of
        a namespace the pod shares with the node.
    """
    files = {}
    for name, value in sysctls.items():
        path = _relative_path(name)
        if "\n" in value:
            raise InvalidArgument(f"sysctl {name}: the value must be one line")
        if path.startswith("net/"):
            if host_network:
                raise InvalidArgument(f"sysctl {name} would change the node: the pod uses the host network")
        elif path.startswith(_IPC_PREFIXES):
            if host_ipc:
                raise InvalidArgument(f"sysctl {name} would change the node: the pod uses the host IPC namespace")
        else:
            raise InvalidArgument(f"sysctl {name} is not namespaced: it cannot be set for one pod")
        files["/proc/sys/" + path] = value
    return files
