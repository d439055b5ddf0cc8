"""End to end: vmm pods started from a VM template (``template = "auto"``) through kuasar-ctl, a real
vmm-sandboxer, relay and QEMU (TCG). The first pod makes the template, the second restores from it too;
each pod has a network of its own (a pod netns with a veth to its own peer netns, as CNI makes it).
Each guest must have its own boot id and random bytes, the right clock, its pod's hostname, MAC and
address, its own share, and reach its own peer only. A sandboxer restart re-attaches both VMs;
``vmm-templates`` (kuasar-ctl's ``templates``) lists and removes the template; removal of the pods
leaves nothing. The tests run in file order."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from typing import Iterator

import pytest
from support import (Ctl, Sandboxer, assert_nothing_left, running, start_sleeping_pod, template_sandboxer, tool,
                     veth_netns_pair)

PODS = 2


@pytest.fixture(scope="module")
def templated(guest_image: str) -> Iterator[tuple[Sandboxer, str]]:
    with template_sandboxer(guest_image) as made:
        yield made


@pytest.fixture(scope="module")
def nets() -> Iterator[list[dict]]:
    """Per pod: netns A_i (eth0 10.248.<i>.2/24, default via the peer) and peer netns B_i (10.248.<i>.1)."""
    tag = uuid.uuid4().hex[:6]
    made: list[str] = []
    out = []
    try:
        for i in range(PODS):
            a, b = f"kvtpl-a{i}-{tag}", f"kvtpl-b{i}-{tag}"
            mac = veth_netns_pair(a, b, f"10.248.{i}.2", f"10.248.{i}.1", made)
            out.append({"path": f"/run/netns/{a}", "peer": b, "mac": mac, "ip": f"10.248.{i}.2"})
        yield out
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "delete", name], stderr=subprocess.DEVNULL, check=False)


@pytest.fixture(scope="module")
def pods(templated, nets, images, tmp_path_factory) -> Iterator[list[dict]]:
    sandboxer, _ = templated
    tmp = tmp_path_factory.mktemp("vmmtpl")
    ctl = Ctl("vmm", sandboxer.listen, str(tmp / "ctl"), images)
    out = [start_sleeping_pod(ctl, tmp, f"tpl{i}", 0, ("--netns", net["path"])) | {"net": net}
           for i, net in enumerate(nets)]
    yield out
    for pod in out:
        ctl("rmp", pod["id"], check=False)


def _vm(pod: dict, script: str) -> str:
    return pod["ctl"].out("vm-exec", pod["id"], "--", "sh", "-c", script)


def test_both_pods_restore_from_one_template(pods):
    infos = [json.loads(p["ctl"].out("inspectp", p["id"]))["info"]["sandboxerInfo"] for p in pods]
    assert infos[0].get("template") and infos[0]["template"] == infos[1].get("template")
    print("pod + container running: %s s" % ", ".join("%.2f" % p["seconds"] for p in pods))


def test_each_guest_has_its_own_entropy_clock_hostname_share_and_network(pods):
    seen = []
    for pod in pods:
        out = _vm(pod, "cat /proc/sys/kernel/random/boot_id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; "
                       "echo; date +%s; nsenter --uts=/run/sandbox-ns/uts hostname; cat /sys/class/net/eth0/address; "
                       "ip -o -4 addr show dev eth0 | awk '{print $4}'; ls /run/kuasar/state").split()
        boot_id, random, clock, hostname, mac, addr = out[:6]
        assert abs(int(clock) - time.time()) < 5, "guest clock not synced after the restore"
        assert hostname == pod["hostname"] and mac == pod["net"]["mac"] and addr == pod["net"]["ip"] + "/24"
        assert pod["ctr"] in out[6:] and not any(p["ctr"] in out[6:] for p in pods if p is not pod)
        seen.append((boot_id, random))
    assert len({s[0] for s in seen}) == PODS and len({s[1] for s in seen}) == PODS


def test_each_pod_reaches_its_own_peer_only(pods):
    for i, pod in enumerate(pods):
        own = pod["ctl"]("exec", pod["ctr"], "--", "ping", "-c", "1", "-W", "5", f"10.248.{i}.1", check=False)
        assert own.returncode == 0, own.stdout
        other = (i + 1) % PODS
        alien = pod["ctl"]("exec", pod["ctr"], "--", "ping", "-c", "1", "-W", "2", f"10.248.{other}.1", check=False)
        assert alien.returncode != 0


def test_sandboxer_restart_reattaches_template_pods(templated, pods):
    sandboxer, _ = templated
    pids = [json.loads(p["ctl"].out("inspectp", p["id"]))["info"]["pid"] for p in pods]
    os.kill(sandboxer.proc.pid, 9)
    sandboxer.proc.wait()
    assert all(running(pid) for pid in pids)
    os.unlink(sandboxer.listen)  # the killed sandboxer's socket: start() waits for the new one
    sandboxer.start()
    for pod, pid in zip(pods, pids):
        status = json.loads(pod["ctl"].out("inspectp", pod["id"]))
        assert status["status"]["state"] == "SANDBOX_READY" and status["info"]["pid"] == pid
        assert pod["ctl"].out("exec", pod["ctr"], "--", "hostname") == pod["hostname"]


def test_templates_are_listed_and_removed_and_pods_leave_nothing(templated, pods):
    sandboxer, tdir = templated
    digest = json.loads(pods[0]["ctl"].out("inspectp", pods[0]["id"]))["info"]["sandboxerInfo"]["template"]
    listing = subprocess.run([tool("vmm-templates"), "--config", sandboxer.config], capture_output=True, text=True,
                             check=True).stdout
    assert listing.startswith("DIGEST") and digest[:12] in listing and "512 MiB" in listing
    for pod in pods:
        pod["ctl"]("rmp", pod["id"])
    for pod in pods:  # after both: a running pod's mounts are under the sandboxer's dir too
        assert_nothing_left(sandboxer, pod["id"], "", [pod["root"]], pod["cgroup"])
    removed = subprocess.run([tool("vmm-templates"), "--config", sandboxer.config, "rm", "--all"],
                             capture_output=True, text=True, check=True).stdout
    assert removed.split() == [digest] and os.listdir(tdir) == []
