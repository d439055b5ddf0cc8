"""The pod's root container for runsc: a bundle whose only process sleeps until it is killed.

runsc builds one sandbox (Sentry + gofer) per pod around a root container, and every container
of the pod then joins it. That root process only has to wait; a static ELF that loops on
``pause()`` needs no image, no shell and no libc. It is generated here (129 bytes for x86_64,
148 for aarch64) so the package ships no binary blob, and the bundle's root filesystem holds
nothing else.
"""
from __future__ import annotations

import os
import platform
import struct
from typing import Any, Optional

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.oci import save_spec

__all__ = ["pause_elf", "write_sandbox_bundle", "PAUSE_PATH", "SANDBOX_ANNOTATIONS"]

#: where the pause program lives inside the root container
PAUSE_PATH = "/pause"
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_ANNOTATIONS = (CONTAINER_TYPE, SANDBOX_ID)

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


def _write_pause(rootfs: str) -> None:
    os.makedirs(rootfs, mode=0o755, exist_ok=True)
    path = os.path.join(rootfs, PAUSE_PATH.lstrip("/"))
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(pause_elf())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def write_sandbox_bundle(bundle: str, sandbox_id: str, hostname: str = "", netns: str = "",
                         cgroups_path: str = "") -> dict[str, Any]:
    """Write ``<bundle>/config.json`` and ``<bundle>/rootfs/pause`` for the pod's root container.

    Args:
        netns: the pod's network namespace file, joined by the sandbox (``""``: a new one).
        cgroups_path: ``linux.cgroupsPath`` of the sandbox (``""``: none).

    Returns the spec written.
    """
    _write_pause(os.path.join(bundle, "rootfs"))
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    namespaces.append({"type": "network", "path": netns} if netns else {"type": "network"})
    caps: list[str] = []
    spec: dict[str, Any] = {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 65535, "gid": 65535}, "args": [PAUSE_PATH],
                    "env": ["PATH=/"], "cwd": "/", "noNewPrivileges": True,
                    "capabilities": {k: caps for k in ("bounding", "effective", "permitted")}},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": hostname or sandbox_id[:63],
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                   {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}],
        "annotations": {CONTAINER_TYPE: "sandbox", SANDBOX_ID: sandbox_id},
        "linux": {"namespaces": namespaces},
    }
    if cgroups_path:
        spec["linux"]["cgroupsPath"] = cgroups_path
    save_spec(bundle, spec)
    return spec
