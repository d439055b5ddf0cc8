import os
import subprocess
import sys

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_vmm_sandboxer import network


def _sh(ns, cmd):
    return subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True).stdout


async def test_setup_and_destroy(pod_netns):
    net = await network.setup(pod_netns["path"])
    assert [i.name for i in net.interfaces] == ["eth0"]
    iface = net.interfaces[0]
    assert iface.tap == "tap_kua_0" and iface.mtu == 1500
    assert [(a.address, a.prefixlen) for a in iface.addresses] == [("10.231.0.2", 24)]
    assert any(r.dest == "10.231.0.0/24" and r.device == "eth0" for r in net.routes)
    assert net.nics[0].mac == iface.mac
    filters = _sh(pod_netns["pod"], "tc filter show dev eth0 parent ffff:; tc filter show dev tap_kua_0 parent ffff:")
    assert "Egress Redirect to device tap_kua_0" in filters and "Egress Redirect to device eth0" in filters
    assert network.PodNetwork.from_json(net.to_json()) == net
    await network.destroy(net)
    assert "tap_kua_0" not in _sh(pod_netns["pod"], "ip link")
    assert "ingress" not in _sh(pod_netns["pod"], "tc qdisc show dev eth0")


async def test_no_fork_and_nothing_on_the_host(pod_netns, monkeypatch):
    """A forked child would share the daemon's signal wakeup fd (its SIGTERM would stop the daemon)."""
    def no_fork():
        raise AssertionError("network code must not fork")
    monkeypatch.setattr(os, "fork", no_fork)
    net = await network.setup(pod_netns["path"])
    try:
        assert "tap_kua_0" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
        assert "tap_kua_0" in _sh(pod_netns["pod"], "ip link")
    finally:
        await network.destroy(net)


async def test_destroy_of_vanished_netns_is_quiet():
    await network.destroy(network.PodNetwork(netns="/var/run/netns/kv-does-not-exist"))
    assert not os.path.exists("/var/run/netns/kv-does-not-exist")


async def test_a_netlink_failure_is_invalid_argument_and_leaves_no_tap(pod_netns):
    """eth0 already has an ingress qdisc: setup fails naming the errno and removes the tap it made."""
    subprocess.run(["ip", "netns", "exec", pod_netns["pod"], "tc", "qdisc", "add", "dev", "eth0", "ingress"],
                   check=True)
    with pytest.raises(InvalidArgument, match=r"cannot set up VM networking in .*File exists"):
        await network.setup(pod_netns["path"])
    assert "tap_kua_0" not in _sh(pod_netns["pod"], "ip link")


def test_the_sandboxer_starts_without_pyroute2():
    """Importing pyroute2 costs ~100 ms of every restart; it is loaded when a pod's network is set up."""
    code = "import sys, kuasar_vmm_sandboxer.main; print('pyroute2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


#: the mirror filters of the pod's veth and of its tap
WIRES = "tc filter show dev eth0 parent ffff:; tc filter show dev tap_kua_0 parent ffff:"


@pytest.fixture
def vm_netns(pod_netns):
    """A second namespace standing in for a warm VM's, holding its tap ``kwtest0`` (alias ``from-vm``)."""
    name = pod_netns["pod"].replace("kvpod-", "kvvm-")
    subprocess.run(["sh", "-c", f"set -e; ip netns add {name}; ip -n {name} tuntap add kwtest0 mode tap; "
                                f"ip -n {name} link set kwtest0 alias from-vm"], check=True)
    yield f"/var/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], check=False)


async def test_a_vms_tap_takes_the_place_of_the_pods(pod_netns, vm_netns):
    net = await network.setup(pod_netns["path"])
    try:
        with pytest.raises(OSError, match="missing0 is not in"):
            await network.adopt_taps(vm_netns, pod_netns["path"], net.nics, ["missing0"])
        assert "tap_kua_0" in _sh(pod_netns["pod"], "ip link")  # nothing of the pod's was touched
        await network.adopt_taps(vm_netns, pod_netns["path"], net.nics, ["kwtest0"])
        link = _sh(pod_netns["pod"], "ip -d link show tap_kua_0")
        assert "alias from-vm" in link and "UP" in link and "kwtest0" not in _sh(pod_netns["pod"], "ip link")
        assert "kwtest0" not in subprocess.run(["ip", "-n", vm_netns.rsplit("/", 1)[1], "link"], capture_output=True,
                                               text=True).stdout
        filters = _sh(pod_netns["pod"], WIRES)
        assert filters.count("Egress Redirect to device tap_kua_0") == 1 and "Redirect to device eth0" in filters

        _sh(pod_netns["pod"], "ip link del tap_kua_0")  # what a failed adoption can leave: the pod without its tap
        await network.restore_taps(pod_netns["path"], net.nics)
        link = _sh(pod_netns["pod"], "ip -d link show tap_kua_0")
        assert "UP" in link and "from-vm" not in link
        filters = _sh(pod_netns["pod"], WIRES)
        assert filters.count("Egress Redirect to device tap_kua_0") == 1 and "Redirect to device eth0" in filters
        with pytest.raises(OSError, match="no veth with MAC"):
            await network.restore_taps(pod_netns["path"], (network.Nic("tap_kua_9", "02:00:00:00:00:99"),))
    finally:
        await network.destroy(net)
    assert "tap_kua_0" not in _sh(pod_netns["pod"], "ip link")
