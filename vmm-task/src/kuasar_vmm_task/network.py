"""Guest NICs and routes from the host's UpdateInterfaces / UpdateRoutes / SetupSandbox requests.

Interfaces are matched by MAC address (the tap the host made carries the pod veth's MAC), renamed,
given their MTU and addresses and brought up; routes are replaced. In a VM restored from a template
the NICs still carry the template's MACs: :func:`adopt_macs` first gives each wanted MAC to a NIC
that has none of them, in device order. The work is done with busybox
``ip`` (netlink), whose arguments are built only from validated values. Not pyroute2, as on the host:
importing it in the guest takes 1.95 s on first use under TCG (asyncio: 0.5 s), on the start of every
pod with a network, and it needs ``unittest`` in the image (``pyroute2.lab`` imports ``unittest.mock``).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from kuasar_shared import process
from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_shared.values import Route

from kuasar_vmm_task.boot import ENV

__all__ = ["IPAddr", "Interface", "links_by_mac", "spare_nics", "interface_commands", "route_commands",
           "adopt_macs", "apply_interfaces", "apply_routes"]

log = logging.getLogger(__name__)

_IFNAME = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


@dataclass(frozen=True)
class IPAddr:
    address: str
    mask: str


@dataclass(frozen=True)
class Interface:
    name: str
    hw_addr: str
    addresses: Tuple[IPAddr, ...] = ()
    mtu: int = 0


def _prefix(addr: IPAddr) -> str:
    """``address/prefixlen``; the mask may be a prefix length or a dotted netmask."""
    try:
        ip = ipaddress.ip_address(addr.address)
        mask = addr.mask or str(ip.max_prefixlen)
        net = ipaddress.ip_interface(f"{ip}/{mask}")
    except ValueError as err:
        raise InvalidArgument(f"invalid address {addr.address}/{addr.mask}: {err}") from err
    return net.with_prefixlen


def _ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise InvalidArgument(f"invalid interface name {name!r}")
    return name


def links_by_mac(sys_net: str = "/sys/class/net") -> Dict[str, str]:
    """MAC (lowercase) -> current interface name."""
    found = {}
    for name in os.listdir(sys_net):
        try:
            with open(os.path.join(sys_net, name, "address")) as handle:
                found[handle.read().strip().lower()] = name
        except OSError:
            continue
    return found


def spare_nics(wanted: Sequence[str], sys_net: str = "/sys/class/net") -> List[str]:
    """Names of the device-backed links (NICs: not ``lo``, bridges or veths) whose MAC is not in
    ``wanted``, in ifindex order (the order QEMU's command line gave the devices)."""
    found = []
    for name in os.listdir(sys_net):
        path = os.path.join(sys_net, name)
        if not os.path.exists(os.path.join(path, "device")):
            continue
        try:
            with open(os.path.join(path, "address")) as handle:
                mac = handle.read().strip().lower()
            with open(os.path.join(path, "ifindex")) as handle:
                index = int(handle.read())
        except (OSError, ValueError):
            continue
        if mac not in wanted:
            found.append((index, name))
    return [name for _index, name in sorted(found)]


def interface_commands(iface: Interface, current: str) -> List[List[str]]:
    """The ``ip`` argv lists that turn link ``current`` into ``iface``."""
    name = _ifname(iface.name or current)
    cmds = []
    if name != current:
        cmds += [["ip", "link", "set", current, "down"], ["ip", "link", "set", current, "name", name]]
    if iface.mtu:
        cmds.append(["ip", "link", "set", name, "mtu", str(int(iface.mtu))])
    cmds.append(["ip", "addr", "flush", "dev", name])
    cmds += [["ip", "addr", "add", _prefix(a), "dev", name] for a in iface.addresses]
    cmds.append(["ip", "link", "set", name, "up"])
    return cmds


def route_commands(route: Route) -> List[str]:
    """The ``ip route replace`` argv for one route."""
    argv = ["ip", "route", "replace"]
    try:
        argv.append(str(ipaddress.ip_network(route.dest, strict=False)) if route.dest else "default")
        if route.gateway:
            argv += ["via", str(ipaddress.ip_address(route.gateway))]
        if route.source:
            argv += ["src", str(ipaddress.ip_address(route.source))]
    except ValueError as err:
        raise InvalidArgument(f"invalid route {route}: {err}") from err
    if route.device:
        argv += ["dev", _ifname(route.device)]
    if route.scope:
        argv += ["scope", str(int(route.scope))]
    return argv


async def adopt_macs(interfaces: Sequence[Interface], sys_net: str = "/sys/class/net") -> None:
    """Set each wanted MAC that no link has on the next spare NIC (:func:`spare_nics`).

    :raise InvalidArgument: a bad MAC. :raise NotFound: more interfaces than spare NICs.
    """
    wanted = [i.hw_addr.lower() for i in interfaces]
    for mac in wanted:
        if not _MAC.match(mac):
            raise InvalidArgument(f"invalid MAC address {mac!r}")
    present = links_by_mac(sys_net)
    missing = [mac for mac in wanted if mac not in present]
    spare = spare_nics(wanted, sys_net)
    if len(missing) > len(spare):
        raise NotFound(f"{len(missing)} interfaces need a NIC, the guest has {len(spare)} spare ones")
    for mac, name in zip(missing, spare):
        for argv in (["ip", "link", "set", name, "down"], ["ip", "link", "set", name, "address", mac]):
            await process.run(argv, env=ENV, timeout=10)
        log.info("NIC %s takes the pod's MAC %s", name, mac)


async def apply_interfaces(interfaces: Sequence[Interface]) -> None:
    """Configure each interface on the link with its MAC.

    :raise NotFound: no link has the MAC. :raise InvalidArgument: bad names or addresses.
    :raise CommandError: ``ip`` refused (its message is kept).
    """
    links = links_by_mac()
    for iface in interfaces:
        mac = iface.hw_addr.lower()
        if not _MAC.match(mac):
            raise InvalidArgument(f"invalid MAC address {iface.hw_addr!r} for {iface.name}")
        if mac not in links:
            raise NotFound(f"no guest interface has MAC {mac} (wanted for {iface.name})")
        for argv in interface_commands(iface, links[mac]):
            await process.run(argv, env=ENV, timeout=10)
        log.info("interface %s (%s) configured", iface.name, mac)


async def apply_routes(routes: Sequence[Route]) -> None:
    for route in routes:
        await process.run(route_commands(route), env=ENV, timeout=10)
