"""Fixtures for the vmm-sandboxer tests: private network namespaces and a short temp dir
(unix socket paths must stay under 108 bytes)."""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid

import pytest


@pytest.fixture
def short_tmp():
    path = tempfile.mkdtemp(prefix="kv", dir="/tmp")
    yield path
    subprocess.run(["umount", "-R", "-l", path], stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pod_netns():
    """A pod netns with veth ``eth0`` (10.231.0.2/24) whose peer sits in a second netns (10.231.0.1/24)."""
    tag = uuid.uuid4().hex[:8]
    pod, peer = "kvpod-" + tag, "kvpeer-" + tag
    script = f"""
set -e
ip netns add {pod}; ip netns add {peer}
ip link add kv{tag} type veth peer name kp{tag}
ip link set kv{tag} netns {pod}; ip link set kp{tag} netns {peer}
ip -n {pod} link set kv{tag} name eth0
ip -n {pod} addr add 10.231.0.2/24 dev eth0; ip -n {pod} link set eth0 up; ip -n {pod} link set lo up
ip -n {peer} addr add 10.231.0.1/24 dev kp{tag}; ip -n {peer} link set kp{tag} up; ip -n {peer} link set lo up
"""
    subprocess.run(["sh", "-c", script], check=True)
    yield {"pod": pod, "peer": peer, "path": f"/var/run/netns/{pod}"}
    for ns in (pod, peer):
        subprocess.run(["ip", "netns", "del", ns], check=False)
