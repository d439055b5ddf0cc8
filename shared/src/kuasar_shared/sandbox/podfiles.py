"""The files containerd's own pod path gives every container of a CRI pod, made by the sandboxer.

With ``sandboxer = "podsandbox"`` containerd writes ``hostname``, ``hosts`` and ``resolv.conf``
into its own pod directory and mounts a pod-wide ``/dev/shm`` tmpfs (``setupSandboxFiles``), then
bind-mounts them into every container. For any other sandboxer it mounts them only if they exist
in its own directory, which it never fills: those files are the sandboxer's job. This module writes
the same content into ``<pod dir>/`` (:func:`write_pod_files`, :func:`mount_pod_shm`); task servers
bind-mount them into the pod's containers (:func:`kuasar_shared.oci.pod.add_pod_mounts`).

Content, as containerd 2.x makes it: ``hostname`` is the pod's hostname (the node's when empty)
and a newline; ``hosts`` is a copy of the node's ``/etc/hosts``; ``resolv.conf`` is rendered from
the pod's DNS config (``search``, ``nameserver`` lines, ``options``), or a copy of the node's
when the pod has none. ``/dev/shm`` is a 64 MiB tmpfs (mode 1777, nosuid, nodev, noexec), except
for pods in the node's IPC namespace, whose containers get the node's ``/dev/shm`` from containerd.
"""
from __future__ import annotations

import os
import shutil
import socket
from typing import Mapping, Optional, Sequence

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.mounts import MountError, mount, unmount_recursive

__all__ = ["HOSTNAME", "HOSTS", "RESOLV_CONF", "SHM", "POD_FILES", "resolv_conf", "write_pod_files",
           "mount_pod_shm", "unmount_pod_shm"]

HOSTNAME, HOSTS, RESOLV_CONF, SHM = "hostname", "hosts", "resolv.conf", "shm"
#: container path -> file name in the pod directory
POD_FILES = {"/etc/hostname": HOSTNAME, "/etc/hosts": HOSTS, "/etc/resolv.conf": RESOLV_CONF}
#: containerd's defaultShmSize
SHM_SIZE = 64 * 1024 * 1024


def resolv_conf(servers: Sequence[str], searches: Sequence[str], options: Sequence[str]) -> str:
    """``resolv.conf`` content for a pod's DNS config (containerd's ``parseDNSOptions``)."""
    content = ""
    if searches:
        content += "search %s\n" % " ".join(searches)
    if servers:
        content += "nameserver %s\n" % "\nnameserver ".join(servers)
    if options:
        content += "options %s\n" % " ".join(options)
    return content


def _write(path: str, content: str) -> None:
    with open(path, "w") as handle:
        handle.write(content)
    os.chmod(path, 0o644)


def write_pod_files(pod_dir: str, hostname: str, dns: Optional[Mapping[str, Sequence[str]]],
                    node_hosts: str = "/etc/hosts", node_resolv_conf: str = "/etc/resolv.conf") -> None:
    """Write ``hostname``, ``hosts`` and ``resolv.conf`` into ``pod_dir`` (which must exist).

    :param dns: ``{"servers", "searches", "options"}``; None copies the node's resolv.conf.
    :raise InvalidArgument: a DNS entry contains a line break, or a node file cannot be read.
    """
    if dns is not None:
        for key, values in dns.items():
            if any("\n" in value or "\r" in value for value in values):
                raise InvalidArgument(f"DNS config {key} must not contain line breaks: {list(values)!r}")
    try:
        _write(os.path.join(pod_dir, HOSTNAME), (hostname or socket.gethostname()) + "\n")
        shutil.copyfile(node_hosts, os.path.join(pod_dir, HOSTS))
        os.chmod(os.path.join(pod_dir, HOSTS), 0o644)
        resolv = os.path.join(pod_dir, RESOLV_CONF)
        if dns is None:
            shutil.copyfile(node_resolv_conf, resolv)
            os.chmod(resolv, 0o644)
        else:
            _write(resolv, resolv_conf(dns.get("servers", ()), dns.get("searches", ()), dns.get("options", ())))
    except OSError as err:
        raise InvalidArgument(f"cannot write the pod files in {pod_dir}: {err}") from err


def mount_pod_shm(pod_dir: str) -> str:
    """Mount the pod's ``/dev/shm`` tmpfs at ``<pod_dir>/shm`` and return that path (undone by
    :func:`unmount_pod_shm` when the pod stops, or by removing the pod directory).

    :raise MountError: the kernel refused the mount.
    """
    target = os.path.join(pod_dir, SHM)
    os.makedirs(target, mode=0o700, exist_ok=True)
    try:
        mount("shm", target, "tmpfs", ["nosuid", "nodev", "noexec", "mode=1777", f"size={SHM_SIZE}"])
    except MountError:
        os.rmdir(target)
        raise
    return target


def unmount_pod_shm(pod_dir: str) -> None:
    """Unmount the pod's ``/dev/shm`` (its containers are gone; missing is fine), as containerd
    does when a pod stops.

    :raise MountError: the kernel refused.
    """
    target = os.path.join(pod_dir, SHM)
    unmount_recursive(target)
    if os.path.isdir(target):
        os.rmdir(target)
