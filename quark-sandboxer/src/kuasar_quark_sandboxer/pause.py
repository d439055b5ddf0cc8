"""The pod's root container for runsc: a bundle whose only process sleeps until it is killed.

runsc builds one sandbox (Sentry + gofer) per pod around a root container, and every container
of the pod then joins it. That root process only has to wait: it runs kuasar_shared's generated
pause program, and the bundle's root filesystem holds nothing else.
"""
from __future__ import annotations

import os
from typing import Any

from kuasar_shared.oci import save_spec
from kuasar_shared.pause import pause_elf

__all__ = ["write_sandbox_bundle", "PAUSE_PATH", "SANDBOX_ANNOTATIONS"]

#: where the pause program lives inside the root container
PAUSE_PATH = "/pause"
CONTAINER_TYPE = "io.kubernetes.cri.container-type"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
SANDBOX_ANNOTATIONS = (CONTAINER_TYPE, SANDBOX_ID)

def _write_pause(rootfs: str) -> None:
    os.makedirs(rootfs, mode=0o755, exist_ok=True)
    path = os.path.join(rootfs, PAUSE_PATH.lstrip("/"))
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(pause_elf())
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def write_sandbox_bundle(bundle: str, sandbox_id: str, hostname: str = "", netns: str = "",
                         cgroups_path: str = "", host_network: bool = False) -> dict[str, Any]:
    """Write ``<bundle>/config.json`` and ``<bundle>/rootfs/pause`` for the pod's root container.

    Args:
        netns: the pod's network namespace file, joined by the sandbox (``""``: a new one).
        host_network: the sandbox stays in the node's network namespace (``netns`` is ignored).
        cgroups_path: ``linux.cgroupsPath`` of the sandbox (``""``: none).

    Returns the spec written.
    """
    _write_pause(os.path.join(bundle, "rootfs"))
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if not host_network:
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
