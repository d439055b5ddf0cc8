"""The relay's registry of attached pods (:class:`Relay`, one :class:`~kuasar_vmm_sandboxer.relay.link.PodLink`
per pod VM) and the control service the sandboxer calls.

The control socket (``--listen``, what :class:`kuasar_shared.sandbox.task_supervisor.TaskServer` pings) serves
``kuasar.vmm.relay.v1.Relay/Attach|Detach`` (``google.protobuf.Struct`` ``{"id": ..., "agent": ...}``) and
``containerd.task.v3.Task/Connect`` (liveness) and ``/Shutdown`` (detach a pod). Attached pods are recorded
in ``<state dir>/<id>.json``; :meth:`Relay.recover` re-attaches them after a restart.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Dict, List, Optional

from google.protobuf import empty_pb2, struct_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import InvalidArgument, NotFound, Unavailable
from kuasar_shared.ids import validate_id
from kuasar_shared.statefiles import CorruptState, read_json
from kuasar_shared.ttrpc import CallContext, Service

from kuasar_vmm_sandboxer.relay.link import PodLink
from kuasar_vmm_sandboxer.relay.names import CONTROL_SERVICE

__all__ = ["Relay"]

log = logging.getLogger(__name__)


class Relay:
    """Every attached pod of one sandboxer directory."""

    def __init__(self, pods_dir: str, state_dir: str) -> None:
        self.pods_dir = pods_dir
        self.state_dir = state_dir
        self.links: Dict[str, PodLink] = {}
        self._lock = asyncio.Lock()

    def services(self) -> list[Service]:
        control = Service(CONTROL_SERVICE)
        control.unary("Attach", struct_pb2.Struct, self._attach_call)
        control.unary("Detach", struct_pb2.Struct, self._detach_call)
        task = Service("containerd.task.v3.Task")
        task.unary("Connect", shim_pb2.ConnectRequest, self._connect_call)
        task.unary("Shutdown", shim_pb2.ShutdownRequest, self._shutdown_call)
        return [control, task]

    def _record(self, sandbox_id: str) -> str:
        return os.path.join(self.state_dir, validate_id(sandbox_id, "sandbox") + ".json")

    async def attach(self, sandbox_id: str, bridges: Optional[List[Dict[str, str]]] = None,
                     agent: str = "") -> PodLink:
        """Attach a pod (idempotent); ``bridges`` are the recorded ones to resume (:meth:`recover`),
        ``agent`` its channel ("": the mux on ``<pod dir>/agent.sock``, or ``hvsock://<path>:<port>``).

        :raise Unavailable: its VM channel cannot be opened. :raise InvalidArgument: bad ``agent``.
        """
        validate_id(sandbox_id, "sandbox")
        async with self._lock:
            link = self.links.get(sandbox_id)
            if link is not None:
                return link
            link = PodLink(sandbox_id, os.path.join(self.pods_dir, sandbox_id), self._record(sandbox_id), agent)
            await link.open()
            self.links[sandbox_id] = link
            os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
            link.save()
            link.resume(bridges or [])
        log.info("sandbox %s attached: tasks at %s", sandbox_id, link.socket)
        return link

    async def detach(self, sandbox_id: str) -> None:
        """Detach a pod and forget it. :raise NotFound: it was not attached."""
        validate_id(sandbox_id, "sandbox")
        async with self._lock:
            link = self.links.pop(sandbox_id, None)
            try:
                os.unlink(self._record(sandbox_id))
            except FileNotFoundError:
                pass
        if link is None:
            raise NotFound("sandbox %s is not attached to the relay" % sandbox_id)
        await link.close()
        log.info("sandbox %s detached", sandbox_id)

    async def recover(self) -> None:
        """Re-attach every recorded pod whose VM channel still answers; drop the others."""
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.state_dir, name)
            try:
                record = read_json(path)
                bridges = record.get("bridges") or []
                if not isinstance(bridges, list):
                    raise TypeError("bridges must be a list, got %s" % type(bridges).__name__)
                await self.attach(str(record["id"]), bridges, str(record.get("agent", "")))
            except (CorruptState, KeyError, TypeError, InvalidArgument, Unavailable, OSError) as err:
                log.warning("relay: dropping recorded pod %s: %s", name, err)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass

    async def close(self) -> None:
        """Close every link (records stay: a restarted relay re-attaches)."""
        links = list(self.links.values())
        self.links.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    @staticmethod
    def _id(req: struct_pb2.Struct) -> str:
        value = req.fields.get("id")
        if value is None or not value.string_value:
            raise InvalidArgument("relay control request needs a string \"id\"")
        return validate_id(value.string_value, "sandbox")

    async def _attach_call(self, ctx: CallContext, req: struct_pb2.Struct) -> empty_pb2.Empty:
        agent = req.fields.get("agent")
        await self.attach(self._id(req), agent=agent.string_value if agent is not None else "")
        return empty_pb2.Empty()

    async def _detach_call(self, ctx: CallContext, req: struct_pb2.Struct) -> empty_pb2.Empty:
        await self.detach(self._id(req))
        return empty_pb2.Empty()

    async def _connect_call(self, ctx: CallContext, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), version="3")

    async def _shutdown_call(self, ctx: CallContext, req: shim_pb2.ShutdownRequest) -> empty_pb2.Empty:
        if req.id in self.links:
            await self.detach(req.id)
        return empty_pb2.Empty()
