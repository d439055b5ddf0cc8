"""Pin a pod's namespaces as bind mounts under ``<dir>/<id>/ns/<type>``.

Containers join the pod through these files (runc-task rewrites ``/proc/0/ns/...`` paths to them),
and after a sandboxer restart they prove that a recorded holder pid still is the pod's holder: the
bind mount and ``/proc/<pid>/ns/<type>`` must be the same namespace inode.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable

from kuasar_shared.mounts import MNT_DETACH, MountError, mount, umount

__all__ = ["bind_namespaces", "unbind_namespaces", "namespaces_match", "ns_dir"]

log = logging.getLogger(__name__)


def ns_dir(pod_dir: str) -> str:
    return os.path.join(pod_dir, "ns")


def bind_namespaces(pod_dir: str, pid: int, types: Iterable[str]) -> None:
    """Bind-mount ``/proc/<pid>/ns/<t>`` onto ``<pod_dir>/ns/<t>`` for each type.

    :raise MountError: when a mount fails (mounts made so far are left for :func:`unbind_namespaces`).
    """
    directory = ns_dir(pod_dir)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    for ns_type in types:
        target = os.path.join(directory, ns_type)
        with open(target, "a"):
            pass
        mount(f"/proc/{pid}/ns/{ns_type}", target, "", ["bind"])


def unbind_namespaces(pod_dir: str) -> None:
    """Unmount and remove every file under ``<pod_dir>/ns`` (missing files are fine)."""
    directory = ns_dir(pod_dir)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        target = os.path.join(directory, name)
        while True:
            try:
                umount(target, MNT_DETACH)
            except MountError:
                break
        try:
            os.unlink(target)
        except OSError as err:
            log.warning("cannot remove namespace file %s: %s", target, err)
    try:
        os.rmdir(directory)
    except OSError as err:
        log.warning("cannot remove %s: %s", directory, err)


def namespaces_match(pod_dir: str, pid: int, types: Iterable[str]) -> bool:
    """True when every ``<pod_dir>/ns/<t>`` is the namespace of ``pid``."""
    for ns_type in types:
        try:
            pinned = os.stat(os.path.join(ns_dir(pod_dir), ns_type))
            live = os.stat(f"/proc/{pid}/ns/{ns_type}")
        except OSError:
            return False
        if (pinned.st_dev, pinned.st_ino) != (live.st_dev, live.st_ino):
            return False
    return True
