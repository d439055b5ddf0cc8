"""The sandboxer's client of the guest agent's ``grpc.SandboxService`` (reached through the relay).

Each call opens its own ttrpc connection on the pod's relay socket (one mux channel in the VM), so an
idle pod holds no connection besides the GetEvents long-poll of :meth:`GuestClient.events`. SetupSandbox
carries the CRI PodSandboxConfig as JSON in an Any with type_url ``PodSandboxConfig`` (upstream's serde
form), plus the pod's interfaces and routes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any, AsyncGenerator, Mapping, Optional, Type, TypeVar

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message

from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.errors import KuasarError, Unavailable
from kuasar_shared.ttrpc import Client

from kuasar_vmm_sandboxer.network import PodNetwork

__all__ = ["GuestClient", "SERVICE", "interfaces_pb", "routes_pb"]

log = logging.getLogger(__name__)
SERVICE = "grpc.SandboxService"
M = TypeVar("M", bound=Message)
#: |delta| above which the guest clock is stepped (upstream: 10 ms)
CLOCK_TOLERANCE_NS = 10_000_000


def _family(family: int) -> sandbox_pb2.IPFamily:
    return sandbox_pb2.v6 if family == socket.AF_INET6 else sandbox_pb2.v4


def interfaces_pb(net: Optional[PodNetwork]) -> list[sandbox_pb2.Interface]:
    if net is None:
        return []
    return [sandbox_pb2.Interface(
        device=i.name, name=i.name, mtu=i.mtu, hwAddr=i.mac, type="veth", raw_flags=i.flags,
        IPAddresses=[sandbox_pb2.IPAddress(family=_family(a.family), address=a.address, mask=str(a.prefixlen))
                     for a in i.addresses]) for i in net.interfaces]


def routes_pb(net: Optional[PodNetwork]) -> list[sandbox_pb2.Route]:
    if net is None:
        return []
    return [sandbox_pb2.Route(dest=r.dest, gateway=r.gateway, device=r.device, source=r.source, scope=r.scope,
                              family=_family(r.family)) for r in net.routes]


class GuestClient:
    """Calls into one pod's guest agent through the relay socket ``socket_path``."""

    def __init__(self, socket_path: str, sandbox_id: str) -> None:
        self.socket_path = socket_path
        self.id = sandbox_id

    async def call(self, method: str, request: Message, response_type: Type[M], timeout: float) -> M:
        """One unary call on a fresh connection.

        :raise Unavailable: the relay socket is missing or the VM agent is gone. Other KuasarErrors as
            the guest answered them.
        """
        client = await Client.connect_unix(self.socket_path, timeout=min(timeout, 5.0))
        try:
            return await client.call(SERVICE, method, request, response_type, timeout=timeout)
        finally:
            await client.close()

    async def check(self, timeout: float) -> None:
        """One Check. :raise Unavailable or DeadlineExceeded: the agent does not answer in ``timeout``."""
        await self.call("Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty, timeout=timeout)

    async def wait_ready(self, timeout: float) -> float:
        """Call Check until it answers (the first call waits for the guest to open its port).

        :raise DeadlineExceeded or Unavailable: no answer within ``timeout``. :return: seconds taken.
        """
        loop = asyncio.get_running_loop()
        begin = loop.time()
        deadline = begin + timeout
        while True:
            left = deadline - loop.time()
            try:
                await self.check(max(left, 0.1))
                return loop.time() - begin
            except Unavailable:
                if loop.time() + 0.05 > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def setup(self, pod_config: Mapping[str, Any], net: Optional[PodNetwork], timeout: float = 10.0) -> None:
        config = any_pb2.Any(type_url="PodSandboxConfig", value=json.dumps(pod_config).encode())
        req = sandbox_pb2.SetupSandboxRequest(config=config, interfaces=interfaces_pb(net), routes=routes_pb(net))
        await self.call("SetupSandbox", req, empty_pb2.Empty, timeout)

    async def exec(self, command: str, stdin: bytes = b"", timeout: float = 30.0) -> str:
        resp = await self.call("ExecVMProcess", sandbox_pb2.ExecVMProcessRequest(command=command, stdin=stdin),
                               sandbox_pb2.ExecVMProcessResponse, timeout)
        return resp.out

    async def events(self) -> AsyncGenerator[events_pb2.Envelope, None]:
        """Each event the guest reports, long-polling GetEvents on one connection (no deadline: the guest
        answers when something happens; close the generator to stop).

        :raise Unavailable: the relay socket is missing or the connection to the guest dropped.
        """
        client = await Client.connect_unix(self.socket_path, timeout=5.0)
        try:
            while True:
                yield await client.call(SERVICE, "GetEvents", empty_pb2.Empty(), events_pb2.Envelope)
        finally:
            await client.close()

    async def sync_clock(self) -> int:
        """Upstream's two-phase sync; returns the measured delta in ns (the guest stepped when large)."""
        packet = sandbox_pb2.SyncClockPacket(ClientSendTime=time.time_ns())
        answer = await self.call("SyncClock", packet, sandbox_pb2.SyncClockPacket, 5.0)
        answer.ServerArriveTime = time.time_ns()
        delta = ((answer.ClientSendTime - answer.ClientArriveTime)
                 + (answer.ServerArriveTime - answer.ServerSendTime)) // 2
        if abs(delta) > CLOCK_TOLERANCE_NS:
            answer.Delta = delta
            try:
                await self.call("SyncClock", answer, sandbox_pb2.SyncClockPacket, 5.0)
            except KuasarError as err:
                log.warning("sandbox %s: clock step failed: %s", self.id, err)
        return delta
