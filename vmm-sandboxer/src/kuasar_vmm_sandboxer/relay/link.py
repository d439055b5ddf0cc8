"""The relay side of one pod VM (:class:`PodLink`): its VM channel, task socket and stdio bridges.

A PodLink owns the VM channel (the mux over ``<pod dir>/agent.sock``, a virtio-serial chardev; or, when
the pod was attached with ``"agent": "hvsock://<path>:<port>"``, a hybrid vsock socket such as Cloud
Hypervisor's ``--vsock socket=``, where each channel is its own connection opened with
``CONNECT <port>`` and the guest speaks plain ttrpc on it), the pod's task socket
``<pod dir>/task.sock`` and the tasks serving it (engine connections, stdio bridges). Attached pods are
recorded in ``<state dir>/<id>.json`` with their running output FIFO bridges, so a relay restarted after
a crash re-attaches them and resumes copying the output of containers that kept running. Each engine
connection to the task socket is carried to the guest by a :class:`~kuasar_vmm_sandboxer.relay.forward.Forwarder`.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, Coroutine, Dict, List, Optional, Set, Tuple

from kuasar_shared.errors import InvalidArgument, Unavailable
from kuasar_shared.statefiles import write_json_atomic
from kuasar_shared.ttrpc import Client
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_shared.ttrpc.transport import start_unix_server

from kuasar_vmm_sandboxer import bundle
from kuasar_vmm_sandboxer.relay.forward import Forwarder
from kuasar_vmm_sandboxer.relay.names import AGENT_SOCKET, TASK_SOCKET, parse_hvsock
from kuasar_vmm_sandboxer.relay.stdio import StdioBridge

__all__ = ["PodLink"]

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

    def _own(self, coro: Coroutine[Any, Any, None],
             group: Optional[Set["asyncio.Task[None]"]] = None) -> "asyncio.Task[None]":
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
