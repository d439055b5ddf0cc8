"""The relay's pods: one :class:`PodLink` per attached VM, and the control service the sandboxer calls.

A PodLink owns the VM channel (the mux over ``<pod dir>/agent.sock``, a virtio-serial chardev; or, when
the pod was attached with ``"agent": "hvsock://<path>:<port>"``, a hybrid vsock socket such as Cloud
Hypervisor's ``--vsock socket=``, where each channel is its own connection opened with
``CONNECT <port>`` and the guest speaks plain ttrpc on it), the pod's task socket
``<pod dir>/task.sock`` and the tasks serving it (engine connections, stdio bridges). Attached pods are
recorded in ``<state dir>/<id>.json`` with their running output FIFO bridges, so a relay restarted after
a crash re-attaches them and resumes copying the output of containers that kept running. The control socket
(``--listen``, what :class:`kuasar_shared.sandbox.taskserver.TaskServer` pings) serves
``kuasar.vmm.relay.v1.Relay/Attach|Detach`` (``google.protobuf.Struct`` ``{"id": ..., "agent": ...}``) and
``containerd.task.v3.Task/Connect`` (liveness) and ``/Shutdown`` (detach a pod).
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Dict, List, Optional, Set, Tuple

from google.protobuf import empty_pb2, struct_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import InvalidArgument, NotFound, Unavailable
from kuasar_shared.ids import validate_id
from kuasar_shared.store import CorruptState, read_json, write_json_atomic
from kuasar_shared.ttrpc import CallContext, Client, Service
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_shared.ttrpc.transport import start_unix_server

from kuasar_vmm_sandboxer import bundle
from kuasar_vmm_sandboxer.relay.forward import Forwarder
from kuasar_vmm_sandboxer.relay.names import AGENT_SOCKET, CONTROL_SERVICE, TASK_SOCKET, parse_hvsock
from kuasar_vmm_sandboxer.relay.stdio import StdioBridge

__all__ = ["Relay", "PodLink"]

log = logging.getLogger(__name__)
_STREAM_LIMIT = 1 << 16


class PodLink:
    """The relay side of one pod VM."""

    connect_timeout = 5.0

    def __init__(self, sandbox_id: str, pod_dir: str, record: str, agent_address: str = "") -> None:
        """:raise InvalidArgument: ``agent_address`` is neither "" (the mux) nor an hvsock address of a
        socket in ``pod_dir`` (the relay connects to nothing else)."""
        self.id = sandbox_id
        self.pod_dir = pod_dir
        self.record = record
        #: stream id -> how to re-create its bridge (cid, exec_id, which, path), saved in ``record``
        self.bridged: Dict[str, Dict[str, str]] = {}
        self.agent_address = agent_address
        self.hvsock: Optional[Tuple[str, int]] = parse_hvsock(agent_address) if agent_address else None
        if self.hvsock is not None and os.path.dirname(self.hvsock[0]) != pod_dir:
            raise InvalidArgument("sandbox %s: the agent socket %s is not in the pod directory %s"
                                  % (sandbox_id, self.hvsock[0], pod_dir))
        self.agent = self.hvsock[0] if self.hvsock else os.path.join(pod_dir, AGENT_SOCKET)
        self.socket = os.path.join(pod_dir, TASK_SOCKET)
        self._mux: Optional[MuxConnection] = None
        self._mux_lock = asyncio.Lock()
        self._listener: Optional[asyncio.AbstractServer] = None
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._bridges: Dict[str, Set["asyncio.Task[None]"]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return "PodLink(%s, mux=%r)" % (self.id, self._mux)

    async def open(self) -> None:
        """Connect the VM channel and listen on the pod's task socket.

        :raise Unavailable: the agent socket does not accept a connection (hvsock: does not exist; the
            guest may still be booting, each channel connects on its own).
        """
        if self.hvsock is None:
            await self._connect()
        elif not os.path.exists(self.agent):
            raise Unavailable("sandbox %s: the VM agent socket %s does not exist" % (self.id, self.agent))
        self._listener = await start_unix_server(self.socket, self._serve)

    async def _connect(self) -> MuxConnection:
        async with self._mux_lock:
            if self._mux is not None and not self._mux.closed:
                return self._mux
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_unix_connection(self.agent, limit=_STREAM_LIMIT), self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as err:
                raise Unavailable("sandbox %s: cannot connect to the VM agent channel %s: %s"
                                  % (self.id, self.agent, err or type(err).__name__)) from err
            if self._mux is not None:
                await self._mux.close()
            self._mux = MuxConnection(reader, writer, is_host=True)
            log.info("sandbox %s: VM channel connected", self.id)
            return self._mux

    async def channel(self) -> Any:
        """A new logical connection to the guest agent (reconnects a lost VM channel once).

        :raise Unavailable: the VM or the guest's port does not take it.
        """
        if self.hvsock is not None:
            return await self._hvsock_channel(*self.hvsock)
        mux = self._mux if self._mux is not None and not self._mux.closed else await self._connect()
        return await mux.open()

    async def _hvsock_channel(self, path: str, port: int) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path, limit=_STREAM_LIMIT),
                                                    self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as err:
            raise Unavailable("sandbox %s: cannot connect to %s: %s" % (self.id, path, err or type(err).__name__)) \
                from err
        try:
            writer.write(b"CONNECT %d\n" % port)
            answer = await asyncio.wait_for(reader.readline(), self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as err:
            writer.close()
            raise Unavailable("sandbox %s: hybrid vsock %s: %s" % (self.id, path, err or type(err).__name__)) from err
        if not answer.startswith(b"OK "):
            writer.close()
            raise Unavailable("sandbox %s: guest port %d on %s refused (%r)" % (self.id, port, path, answer[:40]))
        return reader, writer

    async def client(self) -> Client:
        reader, writer = await self.channel()
        return Client(reader, writer)

    def _own(self, coro: Any, group: Optional[Set["asyncio.Task[None]"]] = None) -> "asyncio.Task[None]":
        task = asyncio.ensure_future(coro)
        for tasks in (self._tasks, group):
            if tasks is not None:
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        return task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await Forwarder(self, reader, writer).run()
        except asyncio.CancelledError:
            # close() ends the connection; the stream server's done-callback would log a cancelled task
            writer.close()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def save(self) -> None:
        """Record the pod and its running bridges (what a restarted relay resumes); not once closed
        (a detached pod's record is gone and stays gone)."""
        if not self._closed:
            write_json_atomic(self.record, {"id": self.id, "agent": self.agent_address,
                                            "bridges": list(self.bridged.values())})

    def bridge(self, cid: str, exec_id: str, which: str, path: str) -> str:
        """Start copying between the FIFO ``path`` and a guest stream; returns the stream id.

        :raise InvalidArgument: the FIFO cannot be opened.
        """
        stream_id = "-".join(p for p in (cid, exec_id, which) if p)
        bridge = StdioBridge(stream_id, path, "in" if which == "stdin" else "out", self.client)
        bridge.open()
        task = self._own(bridge.run(), self._bridges.setdefault(cid, set()))
        if which != "stdin":  # the engine's stdin writer saw the old reader go (EPIPE): nothing to resume
            self.bridged[stream_id] = {"cid": cid, "exec_id": exec_id, "which": which, "path": path}
            self.save()
            task.add_done_callback(lambda t: self._bridge_done(stream_id, t))
        return stream_id

    def _bridge_done(self, stream_id: str, task: "asyncio.Task[None]") -> None:
        """A bridge that ran to its end (the process's stdio closed) is not resumed after a restart;
        one cancelled by a relay shutdown is."""
        if not task.cancelled() and self.bridged.pop(stream_id, None) is not None:
            self.save()

    def resume(self, bridges: List[Dict[str, str]]) -> None:
        """Re-create the recorded bridges after a restart (the guest gives a re-opened stream id the
        output its process wrote meanwhile); one whose FIFO is gone is dropped."""
        for entry in bridges:
            try:
                self.bridge(str(entry["cid"]), str(entry.get("exec_id", "")), str(entry["which"]),
                            str(entry["path"]))
            except (KeyError, TypeError, InvalidArgument) as err:
                log.warning("sandbox %s: stdio bridge %s not resumed: %s", self.id, entry, err)
        if bridges:
            log.info("sandbox %s: %d stdio bridges resumed", self.id, len(self.bridged))

    def forget_container(self, cid: str, remove_bundle: bool) -> None:
        """Stop the container's bridges (output already drained when its process ended) and, if asked,
        remove its host-side preparation."""
        for task in self._bridges.pop(cid, set()):
            if not task.done():
                task.cancel()
        stale = [sid for sid, entry in self.bridged.items() if entry["cid"] == cid]
        for sid in stale:
            del self.bridged[sid]
        if stale:
            self.save()
        if remove_bundle:
            bundle.remove(self.pod_dir, cid)

    async def close(self) -> None:
        """Stop listening, end every connection and bridge, close the VM channel; remove the socket."""
        self._closed = True
        if self._listener is not None:
            self._listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._mux is not None:
            await self._mux.close()
        if self._listener is not None:
            await self._listener.wait_closed()
            self._listener = None
        try:
            os.unlink(self.socket)
        except FileNotFoundError:
            pass


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
