"""Pinning namespaces as bind mounts and checking them after a restart."""
from __future__ import annotations

import os

from kuasar_shared.mounts import mountinfo
from kuasar_runc_sandboxer.nsfiles import bind_namespaces, namespaces_match, ns_dir, unbind_namespaces


def test_bind_match_and_unbind(tmp_path) -> None:
    pod_dir = str(tmp_path / "pod")
    types = ["uts", "ipc", "net"]
    bind_namespaces(pod_dir, os.getpid(), types)
    try:
        assert namespaces_match(pod_dir, os.getpid(), types)
        assert not namespaces_match(pod_dir, 2 ** 22 + 1, types)  # no such process
        assert not namespaces_match(pod_dir, os.getpid(), ["mnt"])  # never pinned
    finally:
        unbind_namespaces(pod_dir)
    assert not os.path.exists(ns_dir(pod_dir))
    assert not [m for m in mountinfo() if m.mountpoint.startswith(pod_dir)]
    unbind_namespaces(pod_dir)  # idempotent
