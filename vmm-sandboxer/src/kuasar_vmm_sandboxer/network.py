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
:func:`destroy` removes exactly what :func:`setup` made. A VM started before its pod (a warm VM of the QEMU
pool, in a network namespace of its own) gets the pod's NICs by :func:`adopt_taps`: its open taps are moved
into the pod namespace and take the place and names of the taps :func:`setup` made.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TypeVar

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.values import Route

from kuasar_vmm_sandboxer.vm import Nic

if TYPE_CHECKING:
    from pyroute2 import IPRoute

__all__ = ["Address", "Interface", "PodNetwork", "setup", "destroy", "adopt_taps", "restore_taps"]

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


def _wire(ns: IPRoute, veth: int, tap: int, mtu: int) -> None:
    """Bring ``tap`` up with the veth's MTU and make the two one wire."""
    ns.link("set", index=tap, mtu=mtu, state="up")
    _mirror(ns, veth, tap)
    _mirror(ns, tap, veth)


def _add_tap(ns: IPRoute, veth: int, name: str, mtu: int) -> None:
    ns.link("add", ifname=name, kind="tuntap", mode="tap")
    _wire(ns, veth, ns.link_lookup(ifname=name)[0], mtu)


def _veths_by_mac(ns: IPRoute, nics: Sequence[Nic]) -> dict[str, int]:
    """The index of the veth of each NIC (by the MAC the NIC copied). :raise OSError: one has none."""
    veths = {link.get_attr("IFLA_ADDRESS"): link["index"] for link in ns.get_links() if _kind(link) == "veth"}
    for nic in nics:
        if nic.mac not in veths:
            raise OSError(errno.ENODEV, "no veth with MAC %s (of %s) in the pod netns" % (nic.mac, nic.tap))
    return veths


def _drop_ingress(ns: IPRoute, index: int) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ns.tc("del", "ingress", index=index, handle="ffff:")
    except NetlinkError as err:
        if err.code not in (errno.EINVAL, errno.ENOENT):
            raise


def _send_taps(ns: IPRoute, taps: Sequence[str], netns: str) -> None:
    target = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for name in taps:
            found = ns.link_lookup(ifname=name)
            if not found:
                raise OSError(errno.ENODEV, "tap %s is not in the VM's network namespace" % name)
            ns.link("set", index=found[0], net_ns_fd=target)
    finally:
        os.close(target)


def _swap_taps(ns: IPRoute, nics: Sequence[Nic], taps: Sequence[str]) -> None:
    veths = _veths_by_mac(ns, nics)
    for nic, name in zip(nics, taps):
        veth = veths[nic.mac]
        _drop_ingress(ns, veth)
        for old in ns.link_lookup(ifname=nic.tap):
            ns.link("del", index=old)
        new = ns.link_lookup(ifname=name)[0]
        ns.link("set", index=new, ifname=nic.tap)
        _wire(ns, veth, new, nic.mtu)


def _rewire(ns: IPRoute, nics: Sequence[Nic]) -> None:
    veths = _veths_by_mac(ns, nics)
    for nic in nics:
        if not ns.link_lookup(ifname=nic.tap):
            _drop_ingress(ns, veths[nic.mac])
            _add_tap(ns, veths[nic.mac], nic.tap, nic.mtu)


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
            iface = Interface(name=name, mac=link.get_attr("IFLA_ADDRESS"), mtu=mtu, tap=tap,
                              flags=int(link["flags"]))
            net.interfaces.append(iface)
            _add_tap(ns, index, tap, mtu)
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


async def adopt_taps(source_netns: str, netns: str, nics: Sequence[Nic], taps: Sequence[str]) -> None:
    """Give a running VM's taps to a pod: move ``taps`` (opened by the VM in ``source_netns``, e.g. a warm VM's
    ``/proc/<pid>/ns/net``) into the pod's ``netns``, where each replaces the tap :func:`setup` made for the NIC
    of the same index (unused yet), under its name, wired to the NIC's veth.

    :raise OSError: a tap or veth is missing or netlink refused; the pod's taps may be gone, and
        :func:`restore_taps` makes them again once the VM (and its taps) are stopped.
    """
    if len(taps) != len(nics):
        raise OSError(errno.EINVAL, "%d taps for %d NICs" % (len(taps), len(nics)))
    await _in_netns(source_netns, lambda ns: _send_taps(ns, taps, netns))
    await _in_netns(netns, lambda ns: _swap_taps(ns, nics, taps))


async def restore_taps(netns: str, nics: Sequence[Nic]) -> None:
    """Make again, as :func:`setup` does, each NIC tap missing from ``netns`` (after a failed :func:`adopt_taps`).

    :raise OSError: netlink refused.
    """
    await _in_netns(netns, lambda ns: _rewire(ns, nics))


async def destroy(net: PodNetwork) -> None:
    """Remove the taps and ingress qdiscs :func:`setup` made; a vanished netns is fine."""
    if not os.path.exists(net.netns):
        log.info("netns %s is gone: nothing to clean", net.netns)
        return
    try:
        await _in_netns(net.netns, lambda ns: _destroy(ns, net))
    except OSError as err:
        log.warning("cannot clean up networking in %s: %s", net.netns, err)
