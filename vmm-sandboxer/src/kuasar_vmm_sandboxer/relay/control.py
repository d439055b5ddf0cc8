"""The sandboxer's side of the relay control service (Attach / Detach a pod's VM channel)."""
from __future__ import annotations

from google.protobuf import empty_pb2, struct_pb2

from kuasar_shared.errors import NotFound
from kuasar_shared.ttrpc import Client

from kuasar_vmm_sandboxer.relay.names import CONTROL_SERVICE

__all__ = ["RelayControl"]


class RelayControl:
    """Calls the relay listening on ``socket_path`` (a fresh connection per call)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    async def _call(self, method: str, sandbox_id: str, timeout: float, **fields: str) -> None:
        req = struct_pb2.Struct()
        req.update({"id": sandbox_id, **fields})
        client = await Client.connect_unix(self.socket_path, timeout=5.0)
        try:
            await client.call(CONTROL_SERVICE, method, req, empty_pb2.Empty, timeout=timeout)
        finally:
            await client.close()

    async def attach(self, sandbox_id: str, agent: str = "") -> None:
        """Have the relay serve the pod's task socket over its VM's agent channel ``agent`` ("": the
        virtio-serial mux on ``<pod dir>/agent.sock``; ``hvsock://<path>:<port>``: hybrid vsock).

        :raise Unavailable: the relay or the pod's VM channel is unreachable.
        """
        await self._call("Attach", sandbox_id, 15.0, agent=agent)

    async def detach(self, sandbox_id: str) -> None:
        """Idempotent: a pod the relay does not know is fine."""
        try:
            await self._call("Detach", sandbox_id, 15.0)
        except NotFound:
            pass
