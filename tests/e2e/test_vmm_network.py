"""End to end: pod networking of a vmm pod. The test plays CNI: it makes a pod netns A with a veth
``eth0`` whose peer ``peer`` sits in a second netns B, and runs the pod with ``kuasar-ctl runp --netns``.
The sandboxer puts a tap next to eth0 (tc mirred both ways) and starts QEMU in A; the guest gets eth0's
MAC, address and routes in SetupSandbox. A busybox container in the VM and processes in B then talk
TCP both ways, move 1 MiB intact and ping each other; after removal nothing of the pod is left in A.
Addresses exist only inside A, B and the guest. The tests run in file order on one VM."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from typing import Iterator

import pytest
from support import Ctl, Sandboxer, assert_nothing_left, ip, pids_with, running, veth_netns_pair, wait_for

SUBNET = "10.247.91"
POD_IP, PEER_IP = f"{SUBNET}.2", f"{SUBNET}.1"


def _in_peer(netns: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """A Python snippet run inside the peer namespace B."""
    return subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=timeout)


def _start_in_peer(netns: str, script: str) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", script],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# a one-shot TCP server in B: prints what the client sent (up to EOF), answers with a line
_SERVER = """
import hashlib, socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("{ip}", {port})); srv.listen(1); srv.settimeout(60)
print("listening", flush=True)
conn, peer = srv.accept(); conn.settimeout(60)
data = b""
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
print(peer[0], len(data), hashlib.md5(data).hexdigest(), data[:64].decode(errors="replace").strip(), flush=True)
"""

# a client in B: connects, reads everything the server sends
_CLIENT = """
import socket, time
deadline = time.monotonic() + 30
while True:
    try:
        conn = socket.create_connection(("{ip}", {port}), timeout=10)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.3)
data = b""
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode().strip())
"""


@pytest.fixture(scope="module")
def netns() -> Iterator[dict]:
    """Pod netns A (eth0 POD_IP/24, default route via the peer) and peer netns B (peer PEER_IP/24)."""
    tag = uuid.uuid4().hex[:8]
    pod_ns, peer_ns = f"kvnet-a-{tag}", f"kvnet-b-{tag}"
    made = []
    try:
        mac = veth_netns_pair(pod_ns, peer_ns, POD_IP, PEER_IP, made)
        yield {"pod": pod_ns, "peer": peer_ns, "path": f"/run/netns/{pod_ns}", "mac": mac}
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], stderr=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def pod(vmm: Sandboxer, netns: dict, images: str, tmp_path_factory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("vmmnet")
    tag = uuid.uuid4().hex[:6]
    pod_cfg = tmp / "pod.json"
    pod_cfg.write_text(json.dumps({
        "metadata": {"name": f"vmnet-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
        "hostname": f"vmnet-{tag}", "log_directory": str(tmp / "logs"),
        "linux": {"cgroup_parent": f"/kuasar-e2e-vmnet-{tag}",
                  "security_context": {"namespace_options": {"network": 0, "pid": 0, "ipc": 0}}}}))
    root = str(tmp / "ctl")
    ctl = Ctl("vmm", vmm.listen, root, images)
    missing = ctl("runp", "--netns", "/run/netns/kvnet-does-not-exist", str(pod_cfg), check=False)
    assert missing.returncode != 0 and "kvnet-does-not-exist: no such network namespace" in missing.stderr.decode()
    started = time.monotonic()
    pod_id = ctl.out("runp", "--netns", netns["path"], str(pod_cfg), timeout=120)
    ctr_cfg = tmp / "web.json"
    ctr_cfg.write_text(json.dumps({
        "metadata": {"name": "web"}, "image": {"image": "busybox"}, "log_path": "web.log",
        "command": ["/bin/sh", "-c", "while true; do echo served by $(hostname) | nc -l -p 8080; done"]}))
    ctr = ctl.out("create", pod_id, str(ctr_cfg), str(pod_cfg))
    ctl("start", ctr)
    info = {"id": pod_id, "ctl": ctl, "ctr": ctr, "root": root, "cgroup": f"kuasar-e2e-vmnet-{tag}",
            "hostname": f"vmnet-{tag}",
            "boot_s": time.monotonic() - started, "removed": False}
    yield info
    if not info["removed"]:
        ctl("rmp", pod_id, check=False)


def test_guest_eth0_has_the_pod_address_and_routes(pod, netns):
    ctl = pod["ctl"]
    addr = ctl.out("vm-exec", pod["id"], "--", "ip", "-o", "addr", "show", "dev", "eth0")
    assert f"inet {POD_IP}/24" in addr
    link = ctl.out("vm-exec", pod["id"], "--", "cat", "/sys/class/net/eth0/address")
    assert link == netns["mac"]  # the guest NIC carries the veth's MAC
    routes = ctl.out("vm-exec", pod["id"], "--", "ip", "route")
    assert f"default via {PEER_IP} dev eth0" in routes
    # the container shares the VM's network: it sees the same eth0
    assert f"inet {POD_IP}/24" in ctl.out("exec", pod["ctr"], "--", "ip", "-o", "addr", "show", "dev", "eth0")
    # the host side: one tap in A, mirrored both ways with eth0, and QEMU running inside A
    taps = [line.split(":")[1].strip() for line in ip("-n", netns["pod"], "-o", "link").splitlines()
            if "tap_kua_" in line]
    assert taps == ["tap_kua_0"]
    assert "Egress Redirect to device tap_kua_0" in _tc(netns["pod"], "filter", "show", "dev", "eth0", "ingress")
    assert "Egress Redirect to device eth0" in _tc(netns["pod"], "filter", "show", "dev", "tap_kua_0", "ingress")
    qemu = json.loads(ctl.out("inspectp", pod["id"]))["info"]["pid"]
    assert os.readlink(f"/proc/{qemu}/ns/net") == _netns_inode(netns["path"])


def _netns_inode(path: str) -> str:
    return "net:[%d]" % os.stat(path).st_ino


def _tc(netns: str, *args: str) -> str:
    return subprocess.run(["tc", "-n", netns, *args], capture_output=True, text=True, check=True).stdout


def test_container_sends_to_the_peer(pod, netns):
    server = _start_in_peer(netns["peer"], _SERVER.format(ip=PEER_IP, port=9000))
    try:
        assert server.stdout.readline().strip() == "listening"
        ctl = pod["ctl"]
        ctl("exec", pod["ctr"], "--", "sh", "-c", f"echo hello from $(hostname) | nc {PEER_IP} 9000", timeout=60)
        out, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    peer, size, _md5, text = out.strip().split(" ", 3)
    assert (peer, text, int(size)) == (POD_IP, f"hello from {pod['hostname']}", len(text) + 1), err


def test_peer_fetches_from_the_container(pod, netns):
    fetched = _in_peer(netns["peer"], _CLIENT.format(ip=POD_IP, port=8080))
    assert fetched.returncode == 0, fetched.stderr
    assert fetched.stdout.strip() == f"served by {pod['hostname']}"


def test_one_mebibyte_arrives_intact(pod, netns):
    server = _start_in_peer(netns["peer"], _SERVER.format(ip=PEER_IP, port=9001))
    try:
        assert server.stdout.readline().strip() == "listening"
        sent = pod["ctl"].out("exec", pod["ctr"], "--", "sh", "-c",
                              "dd if=/dev/urandom of=/tmp/blob bs=65536 count=16 2>/dev/null && "
                              f"md5sum /tmp/blob && nc {PEER_IP} 9001 < /tmp/blob")
        out, err = server.communicate(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    peer, size, md5, _ = (out.strip() + " ").split(" ", 3)
    assert (peer, int(size), md5) == (POD_IP, 1 << 20, sent.split()[0]), err


def test_ping_both_ways(pod, netns):
    def guest_icmp_in() -> int:  # echo requests the guest's kernel answered (not the host side of netns A)
        snmp = pod["ctl"].out("vm-exec", pod["id"], "--", "cat", "/proc/net/snmp").splitlines()
        names, values = [line.split() for line in snmp if line.startswith("Icmp:")][:2]
        return int(values[names.index("InEchos")])

    before = guest_icmp_in()
    from_peer = subprocess.run(["ip", "netns", "exec", netns["peer"], "busybox", "ping", "-c", "5", "-i", "0.2",
                                POD_IP], capture_output=True, text=True, timeout=60)
    assert from_peer.returncode == 0 and " 0% packet loss" in from_peer.stdout, from_peer.stdout + from_peer.stderr
    assert guest_icmp_in() - before == 5
    from_ctr = pod["ctl"]("exec", pod["ctr"], "--", "ping", "-c", "3", PEER_IP, check=False)
    assert from_ctr.returncode == 0 and b" 0% packet loss" in from_ctr.stdout, from_ctr.stdout + from_ctr.stderr
    rtt = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/([\d.]+) ms", from_peer.stdout)
    assert rtt, from_peer.stdout
    print(f"\nping peer -> guest container network: min/avg/max {rtt.group(1)}/{rtt.group(2)}/{rtt.group(3)} ms")


def test_removal_leaves_nothing_in_the_pod_netns(vmm, pod, netns):
    ctl = pod["ctl"]
    qemu = json.loads(ctl.out("inspectp", pod["id"]))["info"]["pid"]
    ctl("rmp", pod["id"])
    pod["removed"] = True
    wait_for(lambda: not running(qemu), 15)
    assert ctl.out("pods", "-q") == ""
    assert os.path.exists(netns["path"])  # the caller's netns is kept: the test (CNI) removes it
    assert_nothing_left(vmm, pod["id"], "", [pod["root"]], pod["cgroup"])
    links = [line.split(":")[1].strip().split("@")[0] for line in ip("-n", netns["pod"], "-o", "link").splitlines()]
    assert sorted(links) == ["eth0", "lo"]
    assert "ingress" not in _tc(netns["pod"], "qdisc", "show", "dev", "eth0")
    assert _tc(netns["pod"], "filter", "show", "dev", "eth0", "ingress").strip() == ""
    assert not [p for p in pids_with(netns["pod"]) if running(p)]
    for name in (netns["pod"], netns["peer"]):
        ip("netns", "delete", name)
    listed = ip("netns", "list")
    assert netns["pod"] not in listed and netns["peer"] not in listed
