"""DT_NEEDED of ELF64 files, to copy exactly the shared libraries the guest's binaries load."""
from __future__ import annotations

import struct
from typing import Any, List, Optional

__all__ = ["is_elf", "needed"]

_DT_NEEDED = 1
_DT_STRTAB = 5
_SHT_DYNAMIC = 6


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"\x7fELF"
    except OSError:
        return False


def needed(path: str) -> List[str]:
    """Library names a 64-bit little-endian ELF file needs (``[]`` for a static one)."""
    with open(path, "rb") as handle:
        data = handle.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    dynamic: Optional[tuple[Any, ...]] = next((s for s in sections if s[1] == _SHT_DYNAMIC), None)
    if dynamic is None:
        return []
    strtab = sections[dynamic[6]]  # sh_link of .dynamic is its string table
    names = []
    for off in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        if tag == _DT_NEEDED:
            start = strtab[4] + value
            names.append(data[start:data.index(b"\0", start)].decode())
    return names
