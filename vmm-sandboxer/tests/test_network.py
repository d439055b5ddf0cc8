import os
import subprocess

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
