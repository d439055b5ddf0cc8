"""The pod files the guest reads from the share (guest ``/run/kuasar/state``): ``hostname``, ``hosts``
and ``resolv.conf`` (the CRI DNS config, else the host's)."""
from __future__ import annotations

import os
import shutil

from kuasar_shared.sandbox import CreateSandbox

__all__ = ["write_pod_files"]


def write_pod_files(shared: str, req: CreateSandbox) -> None:
    """Write the files into ``shared`` (created). :raise OSError: they cannot be written."""
    os.makedirs(shared, mode=0o755, exist_ok=True)
    with open(os.path.join(shared, "hostname"), "w") as f:
        f.write((req.hostname or req.id[:63]) + "\n")
    shutil.copyfile("/etc/hosts", os.path.join(shared, "hosts"))
    dns = req.config.get("dns_config") or {}
    lines = ["nameserver %s" % s for s in dns.get("servers", [])]
    if dns.get("searches"):
        lines.append("search " + " ".join(dns["searches"]))
    if dns.get("options"):
        lines.append("options " + " ".join(dns["options"]))
    if lines:
        with open(os.path.join(shared, "resolv.conf"), "w") as f:
            f.write("\n".join(lines) + "\n")
    elif os.path.exists("/etc/resolv.conf"):
        shutil.copyfile("/etc/resolv.conf", os.path.join(shared, "resolv.conf"))
