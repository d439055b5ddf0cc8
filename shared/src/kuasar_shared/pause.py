"""A tiny static program that waits forever: the process a pod keeps alive to hold its namespaces.

Both the runc holders (PID 1 of a pod's namespaces) and quark's pod root container run it. It
loops on ``pause()`` and needs no image, shell or libc; it is generated here (129 bytes for x86_64,
148 for aarch64) so no binary blob ships. A holder that must reap orphans sets SIGCHLD to SIG_IGN
before exec'ing it (the disposition survives exec and makes the kernel reap them).
"""
from __future__ import annotations

import platform
import struct
from typing import Optional

from kuasar_shared.errors import InvalidArgument

__all__ = ["pause_elf"]

_LOAD_ADDRESS = 0x400000
#: machine -> (ELF e_machine, code): loop { pause() } (x86_64) / loop { ppoll(0, 0, 0, 0) } (aarch64)
_CODE = {
    "x86_64": (0x3E, bytes.fromhex("b822000000" "0f05" "ebf7")),
    "aarch64": (0xB7, struct.pack("<7I", 0xD2800000, 0xD2800001, 0xD2800002, 0xD2800003,
                                  0xD2800928, 0xD4000001, 0x17FFFFFA)),
}
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def pause_elf(machine: Optional[str] = None) -> bytes:
    """A static ELF64 executable for ``machine`` (default: this host) that waits for signals forever.

    :raise InvalidArgument: for a machine without a built-in program.
    """
    name = (machine or platform.machine()).lower()
    name = _MACHINE_ALIASES.get(name, name)
    try:
        e_machine, code = _CODE[name]
    except KeyError:
        raise InvalidArgument(f"no built-in pause program for machine {name!r}") from None
    header_size, phdr_size = 64, 56
    size = header_size + phdr_size + len(code)
    entry = _LOAD_ADDRESS + header_size + phdr_size
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, SysV
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, e_machine, 1, entry, header_size, 0, 0,
                                 header_size, phdr_size, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _LOAD_ADDRESS, _LOAD_ADDRESS, size, size, 0x1000)
    return header + phdr + code
