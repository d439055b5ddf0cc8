"""PID 1 duties of vmm-task: the guest's file systems, cgroups, sysctls, the pod share and ``lo``.

Upstream order (vmm/task/src/main.rs): base mounts, cgroup hierarchies from /proc/cgroups, sysctls,
kernel parameters, the share at /run/kuasar/state, resolv.conf, lo up. A mount that is already there
(EBUSY) is fine: stage 1 or a previous step may have made it.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from typing import List, Sequence, Tuple

from kuasar_shared.mounts import MountError, is_mountpoint, mount

from kuasar_vmm_task.params import TaskParams

__all__ = ["BASE_MOUNTS", "SHARE_DIR", "SHARE_TAG", "SYSCTLS", "cgroup_subsystems", "setup_mounts",
           "mount_share", "write_sysctls", "bind_resolv_conf", "loopback_up", "ENV"]

log = logging.getLogger(__name__)

SHARE_DIR = "/run/kuasar/state"
SHARE_TAG = "kuasar"
ENV = {"PATH": "/bin:/sbin:/usr/bin:/usr/sbin", "XDG_RUNTIME_DIR": "/run"}

#: (fstype, target, options)
BASE_MOUNTS: Sequence[Tuple[str, str, Tuple[str, ...]]] = (
    ("proc", "/proc", ("nosuid", "nodev", "noexec")),
    ("sysfs", "/sys", ("nosuid", "nodev", "noexec")),
    ("devtmpfs", "/dev", ("nosuid",)),
    ("tmpfs", "/dev/shm", ("nosuid", "nodev")),
    ("devpts", "/dev/pts", ("nosuid", "noexec", "ptmxmode=0666", "newinstance")),
    ("tmpfs", "/run", ("nosuid", "nodev", "mode=0755")),
)
SYSCTLS = {
    "/sys/fs/cgroup/memory/memory.use_hierarchy": "1",
    "/proc/sys/vm/overcommit_memory": "1",
    "/proc/sys/net/ipv4/vs/expire_nodest_conn": "1",
}


def _mounted(target: str) -> bool:
    return os.path.exists("/proc/self/mountinfo") and is_mountpoint(target)


def _mount(source: str, target: str, fstype: str, options: Sequence[str]) -> None:
    if not os.path.lexists(target):  # an existing target may be a file (the resolv.conf bind)
        os.makedirs(target)
    if fstype in ("proc", "sysfs", "devtmpfs") and _mounted(target):
        return  # moved here by stage 1
    try:
        mount(source, target, fstype, options)
    except MountError as err:
        if err.errno != errno.EBUSY:
            raise
        log.debug("%s already mounted", target)


def cgroup_subsystems(proc_cgroups: str = "/proc/cgroups") -> List[str]:
    """Enabled cgroup v1 controllers (``/proc/cgroups`` rows with enabled == 1)."""
    names = []
    with open(proc_cgroups) as handle:
        for line in handle:
            fields = line.split()
            if fields and not line.startswith("#") and len(fields) >= 4 and fields[3] == "1":
                names.append(fields[0])
    return names


def setup_mounts() -> None:
    """Base file systems, then one cgroup v1 hierarchy per enabled controller.

    :raise MountError: a base mount fails (the guest cannot work without it).
    """
    for fstype, target, options in BASE_MOUNTS:
        _mount(fstype, target, fstype, options)
    os.makedirs("/dev/pts", exist_ok=True)
    if not os.path.lexists("/dev/ptmx"):
        os.symlink("pts/ptmx", "/dev/ptmx")
    for link, target in (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                         ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2")):
        if not os.path.lexists(link):
            os.symlink(target, link)
    if not is_mountpoint("/sys/fs/cgroup"):
        _mount("tmpfs", "/sys/fs/cgroup", "tmpfs", ("nosuid", "nodev", "noexec", "mode=0755"))
    for name in cgroup_subsystems():
        try:
            _mount("cgroup", os.path.join("/sys/fs/cgroup", name), "cgroup", ("nosuid", "nodev", "noexec", name))
        except MountError as err:
            log.warning("cgroup controller %s not mounted: %s", name, err)


def write_sysctls(values: "dict[str, str]") -> None:
    """Write each existing file; a missing one (module not loaded) is skipped."""
    for path, value in values.items():
        if not os.path.exists(path):
            continue
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as err:
            log.warning("cannot set %s=%s: %s", path, value, err)


def mount_share(params: TaskParams, target: str = SHARE_DIR) -> None:
    """The pod share from the host (tag ``kuasar``): 9p over virtio, or virtiofs.

    :raise MountError: the share is missing (the host did not attach it).
    """
    if params.sharefs_type == "virtiofs":
        _mount(SHARE_TAG, target, "virtiofs", ("relatime", "nodev", "sync", "dirsync"))
    else:
        _mount(SHARE_TAG, target, "9p", ("trans=virtio", "version=9p2000.L", "nodev", "msize=262144"))


def bind_resolv_conf(share: str = SHARE_DIR) -> None:
    source = os.path.join(share, "resolv.conf")
    if os.path.isfile(source):
        _mount(source, "/etc/resolv.conf", "", ("bind",))


#: <linux/sockios.h>, <net/if.h>
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up(name: str = "lo") -> None:
    """Bring ``lo`` up with two ioctls: ``ip link set lo up`` cost a fork of the agent and an exec on
    the boot path, tens of ms under TCG. :raise OSError: no such interface, or not allowed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack_from("16sH", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq))[1]
        if not flags & IFF_UP:
            fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))
