"""mount(2)/umount2(2) for container rootfs and volumes, and recursive clean-up from mountinfo.

Task servers mount the engine's rootfs mounts (overlay from the snapshotter, binds) into
``<bundle>/rootfs`` and must leave nothing behind when a container or pod goes away. Option
strings follow mount(8)/containerd: flag words (``ro``, ``rbind``, ``nosuid``, ``rprivate``...)
become mount flags, everything else (``lowerdir=...``, ``size=64m``) is passed as data. Errors are
:class:`MountError` naming the target, with the errno kept for callers that tolerate some.
"""
from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

from kuasar_shared.errors import Internal, InvalidArgument
from kuasar_shared.values import Mount

__all__ = ["MountError", "MountInfo", "MS", "MNT_DETACH", "parse_options", "mount", "umount", "mount_all",
           "mountinfo", "is_mountpoint", "unmount_recursive"]


class MS:
    """Linux mount flags (``<sys/mount.h>``)."""

    RDONLY = 1
    NOSUID = 2
    NODEV = 4
    NOEXEC = 8
    SYNCHRONOUS = 16
    REMOUNT = 32
    MANDLOCK = 64
    DIRSYNC = 128
    NOATIME = 1024
    NODIRATIME = 2048
    BIND = 4096
    REC = 16384
    UNBINDABLE = 1 << 17
    PRIVATE = 1 << 18
    SLAVE = 1 << 19
    SHARED = 1 << 20
    RELATIME = 1 << 21
    STRICTATIME = 1 << 24


MNT_DETACH = 2

#: option word -> (clear?, flag)
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS.SYNCHRONOUS), "atime": (True, MS.NOATIME), "bind": (False, MS.BIND),
    "defaults": (False, 0), "dev": (True, MS.NODEV), "diratime": (True, MS.NODIRATIME),
    "dirsync": (False, MS.DIRSYNC), "exec": (True, MS.NOEXEC), "mand": (False, MS.MANDLOCK),
    "noatime": (False, MS.NOATIME), "nodev": (False, MS.NODEV), "nodiratime": (False, MS.NODIRATIME),
    "noexec": (False, MS.NOEXEC), "nomand": (True, MS.MANDLOCK), "norelatime": (True, MS.RELATIME),
    "nostrictatime": (True, MS.STRICTATIME), "nosuid": (False, MS.NOSUID),
    "rbind": (False, MS.BIND | MS.REC), "relatime": (False, MS.RELATIME), "remount": (False, MS.REMOUNT),
    "ro": (False, MS.RDONLY), "rw": (True, MS.RDONLY), "strictatime": (False, MS.STRICTATIME),
    "suid": (True, MS.NOSUID), "sync": (False, MS.SYNCHRONOUS),
}
_PROPAGATION: dict[str, int] = {
    "private": MS.PRIVATE, "rprivate": MS.PRIVATE | MS.REC, "shared": MS.SHARED,
    "rshared": MS.SHARED | MS.REC, "slave": MS.SLAVE, "rslave": MS.SLAVE | MS.REC,
    "unbindable": MS.UNBINDABLE, "runbindable": MS.UNBINDABLE | MS.REC,
}

#: the process's own libc (dlopen(NULL)): ctypes.util.find_library would spawn ldconfig/gcc to look for it
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class MountError(Internal):
    """mount(2) or umount2(2) failed.

    :ivar errno: the errno (e.g. ``errno.EBUSY``).
    :ivar target: the mount point.
    """

    def __init__(self, err: int, operation: str, target: str) -> None:
        super().__init__("%s %s: %s" % (operation, target, os.strerror(err)))
        self.errno = err
        self.target = target


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo``."""

    mount_id: int
    parent_id: int
    mountpoint: str
    fstype: str
    source: str
    options: str


def parse_options(options: Iterable[str]) -> tuple[int, int, str]:
    """Split option words into ``(flags, propagation_flags, data)``."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        elif opt:
            data.append(opt)
    return flags, propagation, ",".join(data)


def _enc(value: Optional[str]) -> Optional[bytes]:
    return None if value is None else os.fsencode(value)


def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str]) -> None:
    if _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, _enc(data or None)) != 0:
        err = ctypes.get_errno()
        raise MountError(err, "mount %s (%s) on" % (source or "none", fstype or "no type"), target)


def mount(source: str, target: str, fstype: str = "", options: Sequence[str] = ()) -> None:
    """Mount like ``mount -t fstype -o options source target``.

    Binds (``bind``/``rbind`` option or type ``bind``) with ``ro`` and other per-mount flags are
    followed by the remount that makes those flags apply; propagation words (``rprivate``...)
    are applied with a separate call, as the kernel requires.

    :raise MountError: naming the target when the kernel refuses.
    """
    flags, propagation, data = parse_options(options)
    if fstype == "bind":
        flags |= MS.BIND
        fstype = ""
    is_bind = bool(flags & MS.BIND) and not flags & MS.REMOUNT
    _mount(source, target, fstype or None, flags, data)
    if is_bind and flags & ~(MS.BIND | MS.REC):
        _mount(None, target, None, (flags & ~MS.REC) | MS.REMOUNT | MS.BIND, None)
    if propagation:
        _mount(None, target, None, propagation, None)


def umount(target: str, flags: int = 0) -> None:
    """umount2(target, flags). :raise MountError: naming the target."""
    if _libc.umount2(_enc(target), flags) != 0:
        raise MountError(ctypes.get_errno(), "umount", target)


def _as_mount(m: Union[Mount, Mapping[str, Any]]) -> Mount:
    if isinstance(m, Mount):
        return m
    return Mount(type=m.get("type", "") or "", source=m.get("source", "") or "",
                 target=m.get("target", m.get("destination", "")) or "",
                 options=tuple(m.get("options") or ()))


def mount_all(mounts: Sequence[Union[Mount, Mapping[str, Any]]], target: str) -> list[str]:
    """Mount each of ``mounts`` (containerd rootfs mounts or OCI mount dicts) onto ``target``.

    A mount's own ``target``/``destination`` is a path below ``target`` (created if missing);
    empty means ``target`` itself (the usual rootfs case). On failure the mounts done so far are
    undone in reverse order before the error is raised.

    :raise MountError: for the first mount that fails; :raise InvalidArgument: for a sub-path
        escaping ``target``.
    :return: the mount points, in mount order.
    """
    done: list[str] = []
    try:
        for raw in mounts:
            m = _as_mount(raw)
            point = target
            if m.target and m.target.strip("/"):
                rel = os.path.normpath(m.target.strip("/"))
                if rel.startswith(".."):
                    raise InvalidArgument("mount destination %r escapes %s" % (m.target, target))
                point = os.path.join(target, rel)
                os.makedirs(point, exist_ok=True)
            mount(m.source, point, m.type, m.options)
            done.append(point)
    except BaseException:
        for point in reversed(done):
            try:
                umount(point, MNT_DETACH)
            except MountError:
                pass
        raise
    return done


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo(path: str = "/proc/self/mountinfo") -> list[MountInfo]:
    """Parsed mount table of this process's mount namespace, in kernel order."""
    out = []
    with open(path) as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields = left.split()
            tail = right.split()
            if len(fields) < 6 or len(tail) < 2:
                continue
            out.append(MountInfo(int(fields[0]), int(fields[1]), _unescape(fields[4]), tail[0],
                                 _unescape(tail[1]), fields[5]))
    return out


def is_mountpoint(path: str) -> bool:
    """True when ``path`` (symlinks resolved) is a mount point in this mount namespace."""
    real = os.path.realpath(path)
    return any(m.mountpoint == real for m in mountinfo())


def unmount_recursive(path: str) -> int:
    """Unmount ``path`` and every mount below it, deepest (and most recently stacked) first.

    Busy mounts are detached lazily (``MNT_DETACH``); mounts that disappeared meanwhile are
    ignored. A missing ``path`` is fine.

    :raise MountError: for any other failure.
    :return: how many mounts were removed.
    """
    real = os.path.realpath(path)
    prefix = real.rstrip("/") + "/"
    table = mountinfo()
    order = {id(m): i for i, m in enumerate(table)}
    found = [m for m in table if m.mountpoint == real or m.mountpoint.startswith(prefix)]
    found.sort(key=lambda m: (m.mountpoint.count("/"), order[id(m)]), reverse=True)
    count = 0
    for m in found:
        try:
            umount(m.mountpoint)
        except MountError as err:
            if err.errno == errno_mod.EBUSY:
                umount(m.mountpoint, MNT_DETACH)
            elif err.errno in (errno_mod.EINVAL, errno_mod.ENOENT):
                continue
            else:
                raise
        count += 1
    return count
