"""asyncio ttrpc server: one reader loop per connection, one owned task per call.

Calls on one connection run concurrently and answer out of order, matched by stream id. A call's
task is cancelled when its deadline passes (DEADLINE_EXCEEDED) or when the client goes away. Any
transport that yields an asyncio reader/writer pair can be served through :meth:`Server.serve_connection`.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any, Coroutine, Dict, Iterable, List, Optional, Set, Union

from google.protobuf.message import DecodeError, Message

from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.errors import Code, KuasarError, code_of
from kuasar_shared.ttrpc import framing
from kuasar_shared.ttrpc.service import CallContext, Connection, Method, Service, ServerStream
from kuasar_shared.ttrpc.transport import ByteWriter, start_unix_server

__all__ = ["Server"]

log = logging.getLogger(__name__)


class _Connection:
    def __init__(self, server: "Server", reader: asyncio.StreamReader, writer: ByteWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.calls: Dict[int, asyncio.Task[None]] = {}
        #: method name per call in flight, for :meth:`Server.drain`
        self.methods: Dict[int, str] = {}
        self.streams: Dict[int, ServerStream] = {}
        self.closed = False
        self.handle = Connection()

    async def write(self, stream_id: int, type_: int, flags: int, data: bytes) -> None:
        frame = framing.encode(stream_id, type_, flags, data)
        async with self.lock:
            if self.closed:
                raise ConnectionResetError("ttrpc connection closed")
            self.writer.write(frame)
            await self.writer.drain()

    async def respond(self, stream_id: int, code: int = 0, message: str = "", payload: bytes = b"") -> None:
        resp = request_pb2.Response(payload=payload)
        resp.status.code = code
        resp.status.message = message
        data = resp.SerializeToString()
        if len(data) > framing.MAX_MESSAGE:
            resp = request_pb2.Response()
            resp.status.code = Code.RESOURCE_EXHAUSTED
            resp.status.message = (f"response of {len(data)} bytes exceeds maximum message size "
                                   f"of {framing.MAX_MESSAGE}")
            data = resp.SerializeToString()
        try:
            await self.write(stream_id, framing.TYPE_RESPONSE, 0, data)
        except (ConnectionError, OSError):
            log.debug("client went away before the response on stream %d", stream_id)

    async def run(self) -> None:
        try:
            while True:
                try:
                    frame = await framing.read_frame(self.reader)
                except framing.OversizedFrame as err:
                    log.warning("ttrpc: %s (stream %d)", err, err.stream_id)
                    self._spawn(err.stream_id, self.respond(err.stream_id, Code.RESOURCE_EXHAUSTED, err.message))
                    continue
                self._dispatch(frame)
                # an idle connection must not keep its last frame alive (up to 4 MiB each: 16 connections
                # that once carried a large request held 70 MB)
                del frame
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            await self.close()

    def _spawn(self, stream_id: int, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self.calls[stream_id] = task
        task.add_done_callback(functools.partial(self._finished, stream_id))

    def _finished(self, stream_id: int, task: "asyncio.Task[None]") -> None:
        if self.calls.get(stream_id) is task:
            del self.calls[stream_id]
            self.methods.pop(stream_id, None)
        self.streams.pop(stream_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("ttrpc call on stream %d failed", stream_id, exc_info=task.exception())

    def _dispatch(self, frame: framing.Frame) -> None:
        if frame.type == framing.TYPE_REQUEST:
            if frame.stream_id % 2 == 0 or frame.stream_id in self.calls:
                reason = ("stream id must be odd for client-initiated streams" if frame.stream_id % 2 == 0
                          else "stream id already in use")
                self._spawn(frame.stream_id, self.respond(frame.stream_id, Code.INVALID_ARGUMENT,
                                                          f"{reason}: {frame.stream_id}"))
                return
            self._start_call(frame)
        elif frame.type == framing.TYPE_DATA:
            stream = self.streams.get(frame.stream_id)
            if stream is None:
                log.debug("data for unknown stream %d dropped", frame.stream_id)
                return
            if not frame.flags & framing.FLAG_NO_DATA:
                stream._deliver(frame.data)
            if frame.flags & framing.FLAG_REMOTE_CLOSED:
                stream._deliver(None)
        else:
            log.debug("unexpected frame type %d on stream %d ignored", frame.type, frame.stream_id)

    def _start_call(self, frame: framing.Frame) -> None:
        """Decode the envelope synchronously so a stream exists before its first data frame arrives."""
        sid = frame.stream_id
        try:
            req = request_pb2.Request.FromString(frame.data)
        except DecodeError as err:
            self._spawn(sid, self.respond(sid, Code.INVALID_ARGUMENT, f"malformed ttrpc request: {err}"))
            return
        method = self.server.lookup(req.service, req.method)
        if isinstance(method, str):
            self._spawn(sid, self.respond(sid, Code.UNIMPLEMENTED, method))
            return
        stream: Optional[ServerStream] = None
        if method.streaming:
            stream = ServerStream(lambda data, flags: self.write(sid, framing.TYPE_DATA, flags, data))
            self.streams[sid] = stream
            if req.payload:
                stream._deliver(req.payload)
            if frame.flags & framing.FLAG_REMOTE_CLOSED or not frame.flags & framing.FLAG_REMOTE_OPEN:
                stream._deliver(None)
        self._spawn(sid, self._call(sid, req, method, stream))
        self.methods[sid] = req.method

    async def _call(self, sid: int, req: request_pb2.Request, method: Method,
                    stream: Optional[ServerStream]) -> None:
        metadata: Dict[str, List[str]] = {}
        for kv in req.metadata:
            metadata.setdefault(kv.key, []).append(kv.value)
        loop = asyncio.get_running_loop()
        timeout = req.timeout_nano / 1e9 if req.timeout_nano > 0 else None
        ctx = CallContext(req.service, req.method, metadata, loop.time() + timeout if timeout else None,
                          self.handle)
        try:
            if stream is not None:
                result: Optional[Message] = await asyncio.wait_for(method.handler(ctx, stream), timeout)
            else:
                try:
                    request = method.request_type.FromString(req.payload)  # type: ignore[union-attr]
                except DecodeError as err:
                    await self.respond(sid, Code.INVALID_ARGUMENT,
                                       f"malformed {req.service}/{req.method} request: {err}")
                    return
                result = await asyncio.wait_for(method.handler(ctx, request), timeout)
        except asyncio.TimeoutError:
            await self.respond(sid, Code.DEADLINE_EXCEEDED, f"{req.service}/{req.method}: deadline exceeded")
            return
        except KuasarError as err:
            await self.respond(sid, code_of(err), err.message)
            return
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the server keeps serving whatever a handler does
            log.exception("%s/%s failed", req.service, req.method)
            await self.respond(sid, Code.INTERNAL, f"{req.service}/{req.method}: {err}")
            return
        await self.respond(sid, payload=result.SerializeToString() if result is not None else b"")

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        tasks = [t for t in self.calls.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        self.handle._closed()


class Server:
    """Serves registered services on any number of listeners and connections.

    ``max_connections`` bounds the connections served at once: one more is closed right away (each
    connection may hold a 4 MiB frame and its calls).
    """

    def __init__(self, services: Iterable[Service] = (), max_connections: Optional[int] = None) -> None:
        self.max_connections = max_connections
        self._services: Dict[str, Service] = {}
        self._listeners: List[asyncio.AbstractServer] = []
        self._connections: Set[_Connection] = set()
        self._tasks: Set["asyncio.Task[None]"] = set()
        for svc in services:
            self.register(svc)

    def register(self, service: Service) -> None:
        self._services[service.name] = service

    def lookup(self, service: str, method: str) -> Union[Method, str]:
        """The Method, or a message for UNIMPLEMENTED."""
        svc = self._services.get(service)
        if svc is None:
            return f"service {service} is not implemented"
        found = svc.methods.get(method)
        if found is None:
            return f"method {service}/{method} is not implemented"
        return found

    async def listen_unix(self, path: str, mode: int = 0o600) -> None:
        """Bind a unix socket (replacing a stale file) and start accepting."""
        self._listeners.append(await start_unix_server(path, self.serve_connection, mode))

    async def serve_connection(self, reader: asyncio.StreamReader, writer: ByteWriter) -> None:
        """Serve one established connection until the peer or the server closes it."""
        if self.max_connections is not None and len(self._connections) >= self.max_connections:
            log.warning("ttrpc: refusing a connection: %d are open", len(self._connections))
            writer.close()
            return
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self._connections.discard(conn)
            if task is not None:
                self._tasks.discard(task)

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def stop_listening(self) -> None:
        """Accept no new connection (the ones open keep being served)."""
        for listener in self._listeners:
            listener.close()

    async def drain(self, timeout: float, keep: Iterable[str] = ()) -> bool:
        """Wait up to ``timeout`` s until no call is in flight but those of the methods in ``keep``
        (long-held calls such as Wait, which a restarted server answers as well); True when drained."""
        keep = set(keep)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            busy = [t for c in self._connections for sid, t in c.calls.items()
                    if not t.done() and c.methods.get(sid) not in keep]
            if not busy:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.wait(busy, timeout=remaining)

    async def shutdown(self) -> None:
        """Stop accepting, cancel calls in flight and close every connection."""
        for listener in self._listeners:
            listener.close()
        await asyncio.gather(*(c.close() for c in list(self._connections)), return_exceptions=True)
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners.clear()
