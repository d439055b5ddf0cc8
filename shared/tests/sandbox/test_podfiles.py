"""kuasar_shared.sandbox.podfiles: the files containerd's podsandbox path writes for a pod."""
from __future__ import annotations

import os
import socket

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.mounts import is_mountpoint
from kuasar_shared.sandbox.podfiles import mount_pod_shm, resolv_conf, unmount_pod_shm, write_pod_files


def test_resolv_conf_as_containerd_renders_it() -> None:
    assert resolv_conf(["8.8.8.8", "1.1.1.1"], ["a.example", "b.example"], ["ndots:2", "edns0"]) == (
        "search a.example b.example\nnameserver 8.8.8.8\nnameserver 1.1.1.1\noptions ndots:2 edns0\n")
    assert resolv_conf([], [], []) == ""


def test_write_pod_files(tmp_path) -> None:
    node_hosts, node_resolv = tmp_path / "hosts.node", tmp_path / "resolv.node"
    node_hosts.write_text("127.0.0.1 localhost\n")
    node_resolv.write_text("nameserver 192.0.2.1\n")
    pod = tmp_path / "pod"
    pod.mkdir()
    write_pod_files(str(pod), "", None, str(node_hosts), str(node_resolv))
    assert (pod / "hostname").read_text() == socket.gethostname() + "\n"
    assert (pod / "hosts").read_text() == "127.0.0.1 localhost\n"
    assert (pod / "resolv.conf").read_text() == "nameserver 192.0.2.1\n"
    assert oct(os.stat(pod / "resolv.conf").st_mode & 0o777) == "0o644"
    write_pod_files(str(pod), "web", {"servers": ["10.0.0.10"]}, str(node_hosts), str(node_resolv))
    assert (pod / "hostname").read_text() == "web\n"
    assert (pod / "resolv.conf").read_text() == "nameserver 10.0.0.10\n"
    with pytest.raises(InvalidArgument, match="line breaks"):
        write_pod_files(str(pod), "web", {"searches": ["a\nnameserver 6.6.6.6"]})
    with pytest.raises(InvalidArgument, match="cannot write"):
        write_pod_files(str(pod), "web", None, str(tmp_path / "missing"))


def test_pod_shm_mount_and_unmount(tmp_path) -> None:
    target = mount_pod_shm(str(tmp_path))
    try:
        assert is_mountpoint(target)
        assert oct(os.stat(target).st_mode & 0o7777) == "0o1777"
    finally:
        unmount_pod_shm(str(tmp_path))
    assert not os.path.exists(target)
    unmount_pod_shm(str(tmp_path))  # missing is fine
