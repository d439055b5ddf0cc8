"""Kuasar's ``grpc.SandboxService`` on ttrpc: validate, convert, delegate.

Check, SetupSandbox (JSON PodSandboxConfig with type_url "PodSandboxConfig"), UpdateInterfaces,
UpdateRoutes, ExecVMProcess (``sh -c`` in the guest, stdout+stderr returned), SyncClock (two
phases: phase 1 stamps arrival/send times, phase 2 applies Delta) and GetEvents (long-poll).
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Awaitable, Callable, Iterable, List, Optional

from google.protobuf import empty_pb2

from kuasar_shared import process
from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.errors import FailedPrecondition, NotFound
from kuasar_shared.ttrpc import CallContext, Service
from kuasar_shared.values import Route

from kuasar_vmm_task import network, pod
from kuasar_vmm_task.boot import ENV
from kuasar_vmm_task.events import EventQueue

__all__ = ["SERVICE", "CONFIG_TYPE_URL", "SandboxService", "interfaces_of", "routes_of"]

log = logging.getLogger(__name__)

SERVICE = "grpc.SandboxService"
CONFIG_TYPE_URL = "PodSandboxConfig"
#: ExecVMProcess gets at most this long when the caller sent no deadline
EXEC_TIMEOUT = 60.0


def _set_realtime(ns: int) -> None:
    time.clock_settime_ns(time.CLOCK_REALTIME, ns)


def interfaces_of(items: "Iterable[sandbox_pb2.Interface]") -> List[network.Interface]:
    return [network.Interface(name=i.name or i.device, hw_addr=i.hwAddr, mtu=i.mtu,
                              addresses=tuple(network.IPAddr(a.address, a.mask) for a in i.IPAddresses))
            for i in items]


def routes_of(items: "Iterable[sandbox_pb2.Route]") -> List[Route]:
    return [Route(dest=r.dest, gateway=r.gateway, device=r.device, source=r.source, scope=r.scope,
                  family=socket.AF_INET6 if r.family == sandbox_pb2.v6 else socket.AF_INET)
            for r in items]


class SandboxService:
    """The handlers; :meth:`service` builds the ttrpc method table."""

    def __init__(self, events: EventQueue, pod_ns: pod.PodNamespaces, shell: str = "/bin/sh",
                 clock: Callable[[], int] = time.time_ns, set_clock: Optional[Callable[[int], None]] = None,
                 before_setup: Optional[Callable[[], Awaitable[None]]] = None, adopt_macs: bool = False) -> None:
        """``before_setup`` runs first in SetupSandbox (a VM restored from a template takes its pod's
        share and fresh entropy there); ``adopt_macs``: NICs may still carry a template's MACs."""
        self.before_setup = before_setup
        self.adopt_macs = adopt_macs
        self.events = events
        self.pod_ns = pod_ns
        self.shell = shell
        self.clock = clock
        self.set_clock = set_clock or _set_realtime
        self.setup_done = False

    def service(self) -> Service:
        svc = Service(SERVICE)
        svc.unary("Check", sandbox_pb2.CheckRequest, self.check)
        svc.unary("SetupSandbox", sandbox_pb2.SetupSandboxRequest, self.setup_sandbox)
        svc.unary("UpdateInterfaces", sandbox_pb2.UpdateInterfacesRequest, self.update_interfaces)
        svc.unary("UpdateRoutes", sandbox_pb2.UpdateRoutesRequest, self.update_routes)
        svc.unary("ExecVMProcess", sandbox_pb2.ExecVMProcessRequest, self.exec_vm_process)
        svc.unary("SyncClock", sandbox_pb2.SyncClockPacket, self.sync_clock)
        svc.unary("GetEvents", empty_pb2.Empty, self.get_events)
        return svc

    async def check(self, ctx: CallContext, req: sandbox_pb2.CheckRequest) -> empty_pb2.Empty:
        return empty_pb2.Empty()

    async def setup_sandbox(self, ctx: CallContext, req: sandbox_pb2.SetupSandboxRequest) -> empty_pb2.Empty:
        """:raise NotFound: config type_url is not "PodSandboxConfig" (upstream).
        :raise FailedPrecondition: the pod was already set up in this VM."""
        if req.HasField("config") and req.config.type_url != CONFIG_TYPE_URL:
            raise NotFound(f"unsupported sandbox config type {req.config.type_url!r}, expected {CONFIG_TYPE_URL!r}")
        if self.setup_done:
            raise FailedPrecondition("the sandbox of this VM is already set up")
        config = pod.parse_pod_config(req.config.value if req.HasField("config") else b"")
        if self.before_setup is not None:
            await self.before_setup()
        pod.apply_sysctls(config.sysctls)
        await self.pod_ns.create(pod.pod_hostname(config), config.share_pid, config.sysctls)
        interfaces = interfaces_of(req.interfaces)
        if self.adopt_macs:
            await network.adopt_macs(interfaces)
        await network.apply_interfaces(interfaces)
        await network.apply_routes(routes_of(req.routes))
        self.setup_done = True
        log.info("sandbox %s set up (%d interfaces, %d routes, shared pid %s)", config.pod_id or "-",
                 len(req.interfaces), len(req.routes), config.share_pid)
        return empty_pb2.Empty()

    async def update_interfaces(self, ctx: CallContext, req: sandbox_pb2.UpdateInterfacesRequest) -> empty_pb2.Empty:
        await network.apply_interfaces(interfaces_of(req.interfaces))
        return empty_pb2.Empty()

    async def update_routes(self, ctx: CallContext, req: sandbox_pb2.UpdateRoutesRequest) -> empty_pb2.Empty:
        await network.apply_routes(routes_of(req.routes))
        return empty_pb2.Empty()

    async def exec_vm_process(self, ctx: CallContext,
                              req: sandbox_pb2.ExecVMProcessRequest) -> sandbox_pb2.ExecVMProcessResponse:
        """Run ``command`` with the debug shell; stdout then stderr come back (exit status is not part
        of the upstream response)."""
        # with a deadline the server cancels the call, and cancelling process.run kills the command
        timeout = EXEC_TIMEOUT if ctx.deadline is None else None
        done = await process.run([self.shell, "-c", req.command], input=req.stdin, env=ENV, timeout=timeout,
                                 check=False)
        log.info("ExecVMProcess %r exited with %d", req.command[:80], done.returncode)
        return sandbox_pb2.ExecVMProcessResponse(out=(done.stdout + done.stderr).decode(errors="replace"))

    async def sync_clock(self, ctx: CallContext, req: sandbox_pb2.SyncClockPacket) -> sandbox_pb2.SyncClockPacket:
        if req.Delta == 0:
            resp = sandbox_pb2.SyncClockPacket()
            resp.CopyFrom(req)
            resp.ClientArriveTime = self.clock()
            resp.ServerSendTime = self.clock()
            return resp
        self.set_clock(self.clock() + req.Delta)
        log.info("clock adjusted by %d ns", req.Delta)
        return sandbox_pb2.SyncClockPacket()

    async def get_events(self, ctx: CallContext, req: empty_pb2.Empty) -> events_pb2.Envelope:
        return await self.events.next(ctx.connection)
