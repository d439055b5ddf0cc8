"""The distribution kernel for direct (PVH) boot, and the order in which its modules must be loaded.

QEMU's ``-kernel`` PVH entry needs the uncompressed ELF ``vmlinux``; Debian ships only the bzImage,
whose payload is one compressed stream (XZ on the generic amd64 kernel). All virtio drivers are
modules there, so the initramfs insmods them in dependency order read from each module's
``.modinfo`` ``depends=`` field (no depmod needed on the build host).
"""
from __future__ import annotations

import gzip
import lzma
import os
import re
from typing import Collection, Dict, List, Sequence

__all__ = ["GUEST_MODULES", "extract_vmlinux", "module_index", "builtin_modules", "load_order", "ImageError"]

#: what the guest needs: virtio transports, the agent port, shares, vsock, overlay, NIC, disks, the host RNG
#: (/dev/hwrng: fresh entropy in a VM restored from a template); and
#: bridge, which a privileged (or NET_ADMIN) container may use as on a node (critest: ``brctl addbr``
#: answered "Package not installed" without it)
GUEST_MODULES = ("virtio_pci", "virtio_mmio", "virtio_console", "9pnet_virtio", "9p", "virtiofs",
                 "vmw_vsock_virtio_transport", "overlay", "virtio_net", "virtio_blk", "virtio_rng", "bridge")

_XZ = b"\xfd7zXZ\x00"
_GZIP = b"\x1f\x8b\x08"


class ImageError(Exception):
    """The inputs cannot make a bootable image (message says which input and why)."""


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage (XZ or gzip payload).

    :raise ImageError: no compressed stream in the file decompresses to an ELF image.
    """
    for magic, opener in ((_XZ, "xz"), (_GZIP, "gz")):
        start = bzimage.find(magic)
        while start != -1:
            try:
                if opener == "xz":
                    out = lzma.LZMADecompressor().decompress(bzimage[start:])
                else:
                    out = gzip.GzipFile(fileobj=_Bytes(bzimage[start:])).read()
            except (lzma.LZMAError, OSError, EOFError):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = bzimage.find(magic, start + 1)
    raise ImageError("no XZ or gzip payload in the bzImage decompresses to an ELF vmlinux")


class _Bytes:
    """Just enough of a file object for GzipFile, which stops at the end of its stream."""

    def __init__(self, data: bytes) -> None:
        self._data, self._pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n < 0 else self._pos + n
        chunk, self._pos = self._data[self._pos:end], min(end, len(self._data))
        return chunk

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = pos if whence == 0 else (self._pos + pos if whence == 1 else len(self._data) + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_index(modules_dir: str) -> Dict[str, str]:
    """Module name -> path of its ``.ko`` below ``modules_dir`` (``lib/modules/<version>/kernel``)."""
    index = {}
    for dirpath, _dirs, files in os.walk(modules_dir):
        for fname in files:
            if fname.endswith(".ko"):
                index[_norm(fname[:-3])] = os.path.join(dirpath, fname)
    return index


def _depends(path: str) -> List[str]:
    with open(path, "rb") as handle:
        match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", handle.read())
    return [_norm(d) for d in match.group(1).decode().split(",") if d] if match else []


def builtin_modules(version_dir: str) -> set[str]:
    """Names of modules compiled into the kernel (``modules.builtin``; empty when absent)."""
    try:
        with open(os.path.join(version_dir, "modules.builtin")) as handle:
            return {_norm(os.path.basename(line.strip())[:-3]) for line in handle if line.strip()}
    except OSError:
        return set()


def load_order(wanted: Sequence[str], index: Dict[str, str], builtin: Collection[str] = ()) -> List[str]:
    """Paths of ``wanted`` modules and their dependencies, every module after what it needs.

    :raise ImageError: a module is not in the kernel package.
    """
    order: List[str] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = _norm(name)
        if name in seen or name in builtin:
            return
        if name not in index:
            raise ImageError(f"kernel module {name} not found (needed by {' -> '.join(chain) or 'the guest'})")
        seen.add(name)
        for dep in _depends(index[name]):
            visit(dep, chain + (name,))
        order.append(index[name])

    for name in wanted:
        visit(name, ())
    return order
