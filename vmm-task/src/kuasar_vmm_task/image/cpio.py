"""A minimal ``newc`` cpio writer: the only archive format the kernel unpacks as an initramfs.

Written here because Debian's build hosts need not have cpio installed. Every entry is owned by
root with a fixed mtime so that the same tree always gives the same archive.
"""
from __future__ import annotations

import os
import stat
from typing import IO, Iterator, Tuple

__all__ = ["write_tree"]

_TRAILER = "TRAILER!!!"


def _header(ino: int, mode: int, nlink: int, size: int, name: str, rdev: Tuple[int, int] = (0, 0)) -> bytes:
    fields = [ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name.encode()) + 1, 0]
    return ("070701" + "".join(f"{f:08x}" for f in fields)).encode() + name.encode() + b"\0"


def _pad(out: IO[bytes], written: int) -> None:
    out.write(b"\0" * (-written % 4))


def _entries(root: str, prefix: str) -> Iterator[Tuple[str, str]]:
    """(archive name, host path) for ``root`` and everything below it, parents first, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        name = prefix if rel == "." else os.path.join(prefix, rel)
        if name:
            yield name, dirpath
        for fname in sorted(filenames):
            yield os.path.join(name, fname), os.path.join(dirpath, fname)
        for dname in dirnames:
            full = os.path.join(dirpath, dname)
            if os.path.islink(full):
                yield os.path.join(name, dname), full


def write_tree(out: IO[bytes], trees: "list[tuple[str, str]]",
               char_devices: "list[tuple[str, int, int]]" = ()) -> None:  # type: ignore[assignment]
    """Write ``(host dir, archive prefix)`` trees as one archive (prefix ``""`` = archive root).

    Regular files, directories and symlinks are stored; anything else is skipped. ``char_devices``
    adds ``(name, major, minor)`` nodes (mode 0600), e.g. ``dev/console`` for the kernel.
    """
    ino = 1
    for name, major, minor in char_devices:
        head = _header(ino, stat.S_IFCHR | 0o600, 1, 0, name, (major, minor))
        out.write(head)
        _pad(out, len(head))
        ino += 1
    for root, prefix in trees:
        for name, path in _entries(root, prefix):
            st = os.lstat(path)
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(mode):
                with open(path, "rb") as handle:
                    data = handle.read()
            elif stat.S_ISDIR(mode):
                data = b""
            else:
                continue
            head = _header(ino, mode, 2 if stat.S_ISDIR(mode) else 1, len(data), name)
            out.write(head)
            _pad(out, len(head))
            out.write(data)
            _pad(out, len(data))
            ino += 1
    head = _header(0, 0, 1, 0, _TRAILER)
    out.write(head)
    _pad(out, len(head))
