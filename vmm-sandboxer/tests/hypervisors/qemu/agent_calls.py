"""Sandbox API calls on a guest agent's mux channel, as the relay would make them."""
from __future__ import annotations

import json
from typing import Optional

from google.protobuf import empty_pb2

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.ttrpc import Client
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_sandboxer.guest import interfaces_pb, routes_pb
from kuasar_vmm_sandboxer.network import PodNetwork

SVC = "grpc.SandboxService"


async def exec_in_guest(mux: MuxConnection, command: str) -> str:
    """ExecVMProcess: ``sh -c command`` in the guest, its stdout + stderr."""
    client = Client(*(await mux.open()))
    try:
        resp = await client.call(SVC, "ExecVMProcess", sandbox_pb2.ExecVMProcessRequest(command=command),
                                 sandbox_pb2.ExecVMProcessResponse, timeout=60)
    finally:
        await client.close()
    return resp.out


async def setup_pod(mux: MuxConnection, hostname: str, net: Optional[PodNetwork] = None) -> None:
    """Check, then SetupSandbox of a pod named ``hostname`` (with ``net``'s interfaces and routes)."""
    client = Client(*(await mux.open()))
    req = sandbox_pb2.SetupSandboxRequest(interfaces=interfaces_pb(net), routes=routes_pb(net))
    req.config.type_url = "PodSandboxConfig"
    req.config.value = json.dumps({"hostname": hostname}).encode()
    try:
        await client.call(SVC, "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty, timeout=30)
        await client.call(SVC, "SetupSandbox", req, empty_pb2.Empty, timeout=60)
    finally:
        await client.close()
