"""network: ip argv built from validated interface and route data."""
import pytest

from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_vmm_task import network
from kuasar_shared.values import Route
from kuasar_vmm_task.network import IPAddr, Interface, interface_commands, route_commands


def test_interface_rename_mtu_addresses():
    iface = Interface(name="eth0", hw_addr="02:00:00:00:00:01", mtu=1400,
                      addresses=(IPAddr("10.200.0.2", "24"), IPAddr("10.201.0.2", "255.255.255.0"),
                                 IPAddr("fd00::2", "64")))
    assert interface_commands(iface, "ens3") == [
        ["ip", "link", "set", "ens3", "down"], ["ip", "link", "set", "ens3", "name", "eth0"],
        ["ip", "link", "set", "eth0", "mtu", "1400"], ["ip", "addr", "flush", "dev", "eth0"],
        ["ip", "addr", "add", "10.200.0.2/24", "dev", "eth0"], ["ip", "addr", "add", "10.201.0.2/24", "dev", "eth0"],
        ["ip", "addr", "add", "fd00::2/64", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]]


def test_interface_keeps_name():
    cmds = interface_commands(Interface(name="", hw_addr="02:00:00:00:00:01"), "eth1")
    assert cmds == [["ip", "addr", "flush", "dev", "eth1"], ["ip", "link", "set", "eth1", "up"]]


def test_routes():
    assert route_commands(Route(gateway="10.200.0.1", device="eth0")) == [
        "ip", "route", "replace", "default", "via", "10.200.0.1", "dev", "eth0"]
    assert route_commands(Route(dest="10.0.0.5/8", source="10.200.0.2", scope=253)) == [
        "ip", "route", "replace", "10.0.0.0/8", "src", "10.200.0.2", "scope", "253"]


@pytest.mark.parametrize("bad", [Route(dest="x"), Route(gateway="10.0.0.1; reboot"), Route(device="eth0 up")])
def test_bad_routes(bad):
    with pytest.raises(InvalidArgument):
        route_commands(bad)


def test_bad_interfaces():
    with pytest.raises(InvalidArgument):
        interface_commands(Interface(name="a" * 16, hw_addr="x"), "eth0")
    with pytest.raises(InvalidArgument):
        interface_commands(Interface(name="eth0", hw_addr="x", addresses=(IPAddr("300.1.1.1", "24"),)), "eth0")


async def test_apply_interfaces_matches_by_mac(monkeypatch):
    monkeypatch.setattr(network, "links_by_mac", lambda: {"02:00:00:00:00:01": "eth0"})
    with pytest.raises(NotFound, match="02:00:00:00:00:02"):
        await network.apply_interfaces([Interface(name="eth0", hw_addr="02:00:00:00:00:02")])
    with pytest.raises(InvalidArgument, match="MAC"):
        await network.apply_interfaces([Interface(name="eth0", hw_addr="nope")])


def test_links_by_mac_reads_sysfs(tmp_path):
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "address").write_text("02:AA:00:00:00:01\n")
    (tmp_path / "broken").mkdir()
    assert network.links_by_mac(str(tmp_path)) == {"02:aa:00:00:00:01": "eth0"}


def _sys_net(tmp_path, links):
    """A /sys/class/net stand-in: name -> (mac, ifindex, has a device)."""
    for name, (mac, index, device) in links.items():
        d = tmp_path / name
        d.mkdir()
        (d / "address").write_text(mac + "\n")
        (d / "ifindex").write_text("%d\n" % index)
        if device:
            (d / "device").mkdir()
    return str(tmp_path)


def test_spare_nics_are_device_links_without_a_wanted_mac_in_index_order(tmp_path):
    sys_net = _sys_net(tmp_path, {"lo": ("00:00:00:00:00:00", 1, False), "eth1": ("02:6b:75:00:00:01", 3, True),
                                  "eth0": ("02:6b:75:00:00:00", 2, True), "br0": ("02:aa:00:00:00:01", 4, False)})
    assert network.spare_nics(["02:6b:75:00:00:01"], sys_net) == ["eth0"]
    assert network.spare_nics([], sys_net) == ["eth0", "eth1"]


async def test_adopt_macs_gives_each_missing_mac_to_the_next_spare_nic(tmp_path, monkeypatch):
    sys_net = _sys_net(tmp_path, {"eth0": ("02:6b:75:00:00:00", 2, True), "eth1": ("02:6b:75:00:00:01", 3, True)})
    ran = []

    async def run(argv, **_kw):
        ran.append(argv)
    monkeypatch.setattr(network.process, "run", run)
    await network.adopt_macs([Interface(name="eth0", hw_addr="0A:58:0A:F4:00:05")], sys_net)
    assert ran == [["ip", "link", "set", "eth0", "down"], ["ip", "link", "set", "eth0", "address", "0a:58:0a:f4:00:05"]]
    ran.clear()
    await network.adopt_macs([Interface(name="x", hw_addr="02:6b:75:00:00:01")], sys_net)
    assert ran == []  # a link already has it
    with pytest.raises(NotFound, match="3 interfaces need a NIC, the guest has 2"):
        await network.adopt_macs([Interface(name="e%d" % i, hw_addr="02:00:00:00:00:0%d" % i) for i in range(3)],
                                 sys_net)
    with pytest.raises(InvalidArgument, match="invalid MAC"):
        await network.adopt_macs([Interface(name="e", hw_addr="nope")], sys_net)
