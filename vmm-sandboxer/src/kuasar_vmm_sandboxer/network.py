"""Pod networking for VMs: a tap per veth, mirrored both ways with tc, described to the guest.

For every veth in the pod network namespace (what CNI made) a tap ``tap_kua_<n>`` is created next to
it with the same MTU; an ingress qdisc on both and a ``u32 match u8 0 0`` filter with a ``mirred egress
redirect`` action on each make the pair one wire (matchall/flower are not always in host kernels).
QEMU runs in the namespace and opens the tap by name; the guest NIC gets the veth's MAC, and the
veth's addresses and routes go to the guest in SetupSandbox. All netlink goes through pyroute2 in a
fresh thread that first ``setns``es into the pod namespace (netlink sockets and the tap ioctl belong to
the calling thread's namespace). pyroute2's ``NetNS`` is not used: it forks the daemon, and the child,
SIGTERMed on close, writes into the inherited signal wakeup fd, so the daemon would shut itself down.
pyroute2 is imported in that thread, on first use: importing it costs ~100 ms, which every sandboxer
restart would pay. Its NetlinkError leaves the thread as an OSError with the same errno.
:func:`destroy` removes exactly what :func:`setup` made.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.values import Route

from kuasar_vmm_sandboxer.vm import Nic

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["Address", "Interface", "PodNetwork", "setup", "destroy"]

log = logging.getLogger(__name__)

_ETH_P_ALL = 0x0003
_INGRESS = 0xFFFF0000
_TAP_PREFIX = "tap_kua_"
_SCOPE_LINK = 253
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


@dataclass
class Address:
    family: int  # socket.AF_INET / AF_INET6
    address: str
    prefixlen: int


@dataclass
class Interface:
    """A pod interface as the guest must configure it (matched by MAC)."""

    name: str
    mac: str
    mtu: int
    tap: str
    addresses: list[Address] = field(default_factory=list)
    flags: int = 0


@dataclass
class PodNetwork:
    """What :func:`setup` made in one netns (persisted with the pod)."""

    netns: str
    interfaces: list[Interface] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)

    @property
    def nics(self) -> tuple[Nic, ...]:
        return tuple(Nic(tap=i.tap, mac=i.mac, mtu=i.mtu) for i in self.interfaces)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PodNetwork":
        interfaces = [Interface(**{**i, "addresses": [Address(**a) for a in i.get("addresses", [])]})
                      for i in data.get("interfaces", [])]
        return cls(netns=data["netns"], interfaces=interfaces,
                   routes=[Route(**r) for r in data.get("routes", [])])


def _kind(link: Any) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else ""


def _setns(fd: int) -> None:
    if ctypes.CDLL(None, use_errno=True).setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: %s" % os.strerror(err))


async def _in_netns(netns: str, fn: Callable[[IPRoute], _T]) -> _T:
    """Run ``fn(ipr)`` in a new thread inside ``netns`` (the thread leaves it before it ends)."""
    loop = asyncio.get_running_loop()
    done: "asyncio.Future[_T]" = loop.create_future()

    def finish(result: Any, error: Any) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)

    def run() -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        result: Any = None
        error: Optional[BaseException] = None
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            try:
                target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    _setns(target)
                finally:
                    os.close(target)
                try:
                    ipr = IPRoute()
                    try:
                        result = fn(ipr)
                    finally:
                        ipr.close()
                finally:
                    _setns(own)
            finally:
                os.close(own)
        except NetlinkError as err:
            error = OSError(err.code, "netlink: %s" % err)
        except BaseException as err:  # handed to the awaiting coroutine
            error = err
        loop.call_soon_threadsafe(finish, result, error)

    threading.Thread(target=run, name="netns", daemon=True).start()
    return await done


def _mirror(ns: IPRoute, src: int, dst: int) -> None:
    ns.tc("add", "ingress", index=src, handle="ffff:")
    ns.tc("add-filter", "u32", index=src, parent=_INGRESS, protocol=_ETH_P_ALL, target=0, keys=["0x0/0x0+0"],
          action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": dst})


def _setup(ns: IPRoute, netns: str) -> PodNetwork:
    from pyroute2.netlink.exceptions import NetlinkError

    net = PodNetwork(netns=netns)
    try:
        names: dict[int, str] = {}
        veths = []
        for link in ns.get_links():
            names[link["index"]] = link.get_attr("IFLA_IFNAME")
            if _kind(link) == "veth":
                veths.append(link)
        for n, link in enumerate(veths):
            index, name = link["index"], link.get_attr("IFLA_IFNAME")
            tap = "%s%d" % (_TAP_PREFIX, n)
            mtu = int(link.get_attr("IFLA_MTU") or 1500)
            ns.link("add", ifname=tap, kind="tuntap", mode="tap")
            tap_index = ns.link_lookup(ifname=tap)[0]
            ns.link("set", index=tap_index, mtu=mtu, state="up")
            iface = Interface(name=name, mac=link.get_attr("IFLA_ADDRESS"), mtu=mtu, tap=tap,
                              flags=int(link["flags"]))
            net.interfaces.append(iface)
            _mirror(ns, index, tap_index)
            _mirror(ns, tap_index, index)
            for addr in ns.get_addr(index=index):
                if addr["scope"] == _SCOPE_LINK:
                    continue  # link-local: the guest makes its own
                iface.addresses.append(Address(family=addr["family"], address=addr.get_attr("IFA_ADDRESS"),
                                               prefixlen=addr["prefixlen"]))
        pod_links = {i.name for i in net.interfaces}
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ns.get_routes(family=family):
                device = names.get(r.get_attr("RTA_OIF"), "")
                if device not in pod_links or r.get_attr("RTA_TABLE") not in (None, 254):
                    continue
                dst = r.get_attr("RTA_DST")
                net.routes.append(Route(dest="%s/%d" % (dst, r["dst_len"]) if dst else "",
                                        gateway=r.get_attr("RTA_GATEWAY") or "", device=device,
                                        source=r.get_attr("RTA_PREFSRC") or "", scope=int(r["scope"]),
                                        family=family))
    except (NetlinkError, OSError):
        _destroy(ns, net)
        raise
    return net


def _destroy(ns: IPRoute, net: PodNetwork) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    for iface in net.interfaces:
        for name in (iface.tap, iface.name):
            found = ns.link_lookup(ifname=name)
            if not found:
                continue
            if name == iface.tap:
                ns.link("del", index=found[0])
            else:
                try:
                    ns.tc("del", "ingress", index=found[0], handle="ffff:")
                except NetlinkError as err:
                    log.debug("no ingress qdisc on %s: %s", name, err)


async def setup(netns: str) -> PodNetwork:
    """Create taps and mirrors for every veth in ``netns`` and collect addresses and routes.

    :raise InvalidArgument: the namespace cannot be entered or configured (nothing is left behind).
    """
    try:
        return await _in_netns(netns, lambda ns: _setup(ns, netns))
    except OSError as err:
        raise InvalidArgument("cannot set up VM networking in %s: %s" % (netns, err)) from err


async def destroy(net: PodNetwork) -> None:
    """Remove the taps and ingress qdiscs :func:`setup` made; a vanished netns is fine."""
    if not os.path.exists(net.netns):
        log.info("netns %s is gone: nothing to clean", net.netns)
        return
    try:
        await _in_netns(net.netns, lambda ns: _destroy(ns, net))
    except OSError as err:
        log.warning("cannot clean up networking in %s: %s", net.netns, err)
