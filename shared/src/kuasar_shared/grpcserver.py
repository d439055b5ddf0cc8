"""A small gRPC server for unary calls over HTTP/2 on a unix socket, built on ``h2`` and asyncio.

The sandboxers serve only unary calls of one service to one client (containerd's grpc-go, which speaks
HTTP/2 with prior knowledge on a unix socket). grpcio does that too, but its C core maps ~6 MB and its
import costs ~2 MB more in every sandboxer; this module is the part of gRPC that is used: length-prefixed
messages (identity encoding only), status in trailers, ``grpc-timeout`` deadlines, cancellation by
RST_STREAM, flow control both ways (received data is acknowledged as it is buffered; sends wait for the
peer's window), and a graceful stop that sends GOAWAY and lets calls in flight finish.

Handlers take the request bytes and a :class:`CallContext` and return the response bytes; decoding is
theirs, so a caller decides what a malformed request means.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Awaitable, Callable, Iterable, Mapping, NoReturn, Optional

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from kuasar_shared.errors import Code

__all__ = ["CallContext", "AbortError", "Handler", "GrpcServer", "serve_unix", "MAX_MESSAGE_SIZE"]

_log = logging.getLogger(__name__)

#: containerd's gRPC message size limit, used in both directions.
MAX_MESSAGE_SIZE = 16 << 20
#: receive window per stream and for the connection: a 16 MiB message arrives in few round trips
_WINDOW = 4 << 20
#: containerd holds one Wait per pod for the pod's life, all on one connection
_MAX_STREAMS = 1 << 16
_PREFIX = 5
#: how long a stop waits for a connection to take the last bytes written to it
_CLOSE_TIMEOUT = 1.0
_TIMEOUT = re.compile(r"^([0-9]{1,8})([HMSmun])$")
_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
#: headers of the protocol itself, not metadata for the handler
_RESERVED = frozenset(("te", "content-type", "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
                       "grpc-message-type"))


class AbortError(Exception):
    """Raised by :meth:`CallContext.abort`: ends the call with ``code`` and ``message``."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__("%s: %s" % (code.name, message))
        self.code = code
        self.message = message


class CallContext:
    """What a handler knows of its call besides the request: method, metadata, deadline."""

    def __init__(self, method: str, metadata: tuple[tuple[str, str], ...], deadline: Optional[float]) -> None:
        self.method = method
        self._metadata = metadata
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        """The client's metadata as ``(key, value)`` pairs, keys in lower case (``traceparent`` for tracing)."""
        return self._metadata

    def time_remaining(self) -> Optional[float]:
        """Seconds until the client's deadline (``grpc-timeout``), None when it set none."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    async def abort(self, code: Code, message: str) -> NoReturn:
        """End the call with a non-OK status."""
        if code is Code.OK:
            raise ValueError("abort needs a non-OK code")
        raise AbortError(code, message)


#: a unary method: request bytes and the call's context -> response bytes
Handler = Callable[[bytes, CallContext], Awaitable[bytes]]


def _percent(message: str) -> str:
    """``grpc-message`` encoding: bytes outside printable ASCII, and '%', as %XX of their UTF-8."""
    return "".join(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else "%%%02X" % b
                   for b in message.encode("utf-8", "replace"))


def _text(value: object) -> str:
    """A header name or value as text (h2 hands out str with ``header_encoding`` set, bytes without)."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _timeout(value: str) -> float:
    match = _TIMEOUT.match(value)
    if match is None:
        raise ValueError("malformed grpc-timeout %r" % value)
    return int(match.group(1)) * _UNITS[match.group(2)]


class _Stream:
    """One call: its request as it arrives, then the task running its handler."""

    def __init__(self, stream_id: int, method: str, handler: Handler, context: CallContext) -> None:
        self.id = stream_id
        self.method = method
        self.handler = handler
        self.context = context
        self.body = bytearray()
        self.task: Optional["asyncio.Task[None]"] = None
        self.expired = False
        self.timer: Optional[asyncio.TimerHandle] = None


class _Connection(asyncio.Protocol):
    """One client connection: h2's state machine fed from the socket, one task per call."""

    def __init__(self, server: "GrpcServer") -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8",
            # the headers we send are constants and escaped messages: checking them again costs time per call
            validate_outbound_headers=False, normalize_outbound_headers=False))
        self._transport: Optional[asyncio.Transport] = None
        self._streams: dict[int, _Stream] = {}
        self._window_waiters: dict[int, "asyncio.Future[None]"] = {}
        self._writable: Optional["asyncio.Future[None]"] = None
        self._last_stream = 0
        self._goaway = False
        self.closed = asyncio.Event()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: _MAX_STREAMS,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
        })
        self._conn.initiate_connection()
        self._conn.increment_flow_control_window(_WINDOW - self._conn.inbound_flow_control_window)
        self._flush()
        self._server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            _log.warning("sandbox API connection closed: HTTP/2 protocol error: %s", err)
            self._flush()
            self._abandon()
            return
        for event in events:
            self._dispatch(event)
        self._flush()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def connection_lost(self, exc: Optional[Exception]) -> None:
        for stream in list(self._streams.values()):
            self._cancel(stream)
        self._wake_all()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._server._connections.discard(self)
        self.closed.set()

    # the server's side

    def goaway(self) -> None:
        """Refuse new calls: GOAWAY naming the last stream accepted; calls up to it go on.

        The frame is written past h2, whose state machine would refuse to send anything more once it
        had sent GOAWAY itself, and the calls in flight still have to answer."""
        if self._goaway or self._transport is None or self._transport.is_closing():
            return
        self._goaway = True
        self._flush()
        # frame header (length 8, type 7 GOAWAY, no flags, stream 0), last stream id, error code NO_ERROR
        self._transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00"
                              + (self._last_stream & 0x7FFFFFFF).to_bytes(4, "big") + bytes(4))
        if not self._streams:
            self._transport.close()

    def calls(self) -> list["asyncio.Task[None]"]:
        return [s.task for s in self._streams.values() if s.task is not None]

    def cancel_calls(self) -> None:
        for stream in list(self._streams.values()):
            self._cancel(stream)

    def close(self, now: bool = False) -> None:
        """Close the connection once what is written has been sent, or at once (``now``)."""
        if self._transport is not None:
            if now:
                self._transport.abort()
            else:
                self._transport.close()

    # events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [])
        elif isinstance(event, h2.events.DataReceived):
            self._data(event.stream_id, event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None and stream.task is None:
                self._start(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                self._cancel(stream)
            self._wake(event.stream_id or 0)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self._wake(event.stream_id)
            else:
                self._wake_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self._wake_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # the client leaves (h2 can send nothing more on this connection): nobody to answer
            self._abandon()

    def _request(self, stream_id: int, raw: Iterable[tuple[object, object]]) -> None:
        headers = [(_text(k), _text(v)) for k, v in raw]
        pseudo = {k: v for k, v in headers if k.startswith(":")}
        fields = {k: v for k, v in headers if not k.startswith(":")}
        self._last_stream = max(self._last_stream, stream_id)
        if self._goaway or self._server.stopping:
            self._refuse(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if pseudo.get(":method") != "POST" or not fields.get("content-type", "").startswith("application/grpc"):
            self._send_headers(stream_id, [(":status", "415"), ("content-type", "text/plain")], end=True)
            return
        path = pseudo.get(":path", "")
        handler = self._server.methods.get(path)
        if handler is None:
            self._trailers_only(stream_id, Code.UNIMPLEMENTED, "Method not found: %s" % path)
            return
        if fields.get("grpc-encoding", "identity") != "identity":
            self._trailers_only(stream_id, Code.UNIMPLEMENTED, "grpc-encoding %r is not supported, only identity"
                                % fields["grpc-encoding"])
            return
        timeout = None
        if "grpc-timeout" in fields:
            try:
                timeout = _timeout(fields["grpc-timeout"])
            except ValueError as err:
                self._trailers_only(stream_id, Code.INTERNAL, str(err))
                return
        metadata = tuple((k, v) for k, v in headers if not k.startswith(":") and k not in _RESERVED)
        deadline = None if timeout is None else time.monotonic() + timeout
        stream = _Stream(stream_id, path, handler, CallContext(path, metadata, deadline))
        self._streams[stream_id] = stream
        if timeout is not None:
            stream.timer = self._loop.call_later(timeout, self._expire, stream)

    def _data(self, stream_id: int, data: bytes, flow_controlled: int) -> None:
        if flow_controlled:
            self._conn.acknowledge_received_data(flow_controlled, stream_id)
        stream = self._streams.get(stream_id)
        if stream is None or stream.task is not None:
            return  # answered early (unknown method, too large): the rest is dropped
        stream.body += data
        if len(stream.body) >= _PREFIX:
            length = int.from_bytes(stream.body[1:_PREFIX], "big")
            if length > MAX_MESSAGE_SIZE:
                self._forget(stream)
                self._trailers_only(stream_id, Code.RESOURCE_EXHAUSTED,
                                    "received message larger than max (%d vs. %d)" % (length, MAX_MESSAGE_SIZE))
                self._refuse(stream_id, h2.errors.ErrorCodes.NO_ERROR)  # stop sending the rest

    def _start(self, stream: _Stream) -> None:
        body = bytes(stream.body)
        stream.body = bytearray()
        problem = None
        if len(body) < _PREFIX:
            problem = Code.INTERNAL, "the request carries no message"
        elif body[0] not in (0, 1):
            problem = Code.INTERNAL, "invalid message flag %d" % body[0]
        elif body[0] == 1:
            problem = Code.UNIMPLEMENTED, "compressed message without grpc-encoding; only identity is supported"
        elif len(body) != _PREFIX + int.from_bytes(body[1:_PREFIX], "big"):
            problem = Code.INTERNAL, "the request is not exactly one message (%d bytes, prefix says %d)" % (
                len(body) - _PREFIX, int.from_bytes(body[1:_PREFIX], "big"))
        if problem is not None:
            self._forget(stream)
            self._trailers_only(stream.id, *problem)
            return
        stream.task = self._loop.create_task(self._call(stream, body[_PREFIX:]))

    async def _call(self, stream: _Stream, request: bytes) -> None:
        code, message, response = Code.OK, "", b""
        try:
            response = await stream.handler(request, stream.context)
            if len(response) > MAX_MESSAGE_SIZE:
                code, message = Code.RESOURCE_EXHAUSTED, "response larger than max (%d vs. %d)" % (
                    len(response), MAX_MESSAGE_SIZE)
        except AbortError as err:
            code, message = err.code, err.message
        except asyncio.CancelledError:
            if not stream.expired:
                self._forget(stream)
                raise  # the client reset the stream or went away: nobody to answer
            code, message = Code.DEADLINE_EXCEEDED, "Deadline Exceeded"
        except Exception as err:  # a handler's bug must not take the connection down
            _log.exception("%s failed unexpectedly", stream.method)
            code, message = Code.UNKNOWN, "Unexpected %s: %s" % (type(err).__name__, err)
        try:
            if code is Code.OK:
                # headers, message and trailers leave in one write when the message fits one frame
                self._send_headers(stream.id, [(":status", "200"), ("content-type", "application/grpc")],
                                   flush=False)
                await self._send_data(stream.id, b"\x00" + len(response).to_bytes(4, "big") + response)
                self._send_headers(stream.id, [("grpc-status", "0")], end=True)
            else:
                self._trailers_only(stream.id, code, message)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, ConnectionError):
            pass  # reset by the client, or the connection is gone, while the answer was on its way
        finally:
            self._forget(stream)

    async def _send_data(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` within the peer's flow-control windows, waiting for WINDOW_UPDATEs as needed. The
        last frame is left for the caller's next flush (the trailers' write)."""
        view = memoryview(data)
        while view:
            if self._transport is None or self._transport.is_closing():
                raise ConnectionError("connection closed")
            window = min(self._conn.local_flow_control_window(stream_id), self._conn.max_outbound_frame_size)
            if window <= 0:
                self._flush()
                waiter = self._window_waiters.get(stream_id)
                if waiter is None:
                    waiter = self._window_waiters[stream_id] = self._loop.create_future()
                await waiter
                continue
            chunk, view = view[:window], view[window:]
            self._conn.send_data(stream_id, chunk.tobytes())
            if view:
                self._flush()
                if self._writable is not None:
                    await self._writable

    # helpers

    def _trailers_only(self, stream_id: int, code: Code, message: str) -> None:
        headers = [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", str(int(code)))]
        if message:
            headers.append(("grpc-message", _percent(message)))
        self._send_headers(stream_id, headers, end=True)

    def _send_headers(self, stream_id: int, headers: list[tuple[str, str]], end: bool = False,
                      flush: bool = True) -> None:
        self._conn.send_headers(stream_id, headers, end_stream=end)
        if flush:
            self._flush()

    def _refuse(self, stream_id: int, error: h2.errors.ErrorCodes) -> None:
        try:
            self._conn.reset_stream(stream_id, error)
        except h2.exceptions.StreamClosedError:
            pass
        self._flush()

    def _expire(self, stream: _Stream) -> None:
        stream.timer = None
        if stream.task is None:  # the request is not complete yet
            self._forget(stream)
            self._trailers_only(stream.id, Code.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._refuse(stream.id, h2.errors.ErrorCodes.CANCEL)
        elif not stream.task.done():
            stream.expired = True
            stream.task.cancel()

    def _cancel(self, stream: _Stream) -> None:
        if stream.task is not None and not stream.task.done():
            stream.task.cancel()
        elif stream.task is None:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.timer.cancel()
            stream.timer = None
        self._streams.pop(stream.id, None)
        self._window_waiters.pop(stream.id, None)
        if self._goaway and not self._streams and self._transport is not None:
            self._flush()
            self._transport.close()

    def _wake(self, stream_id: int) -> None:
        waiter = self._window_waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_all(self) -> None:
        for stream_id in list(self._window_waiters):
            self._wake(stream_id)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _abandon(self) -> None:
        for stream in list(self._streams.values()):
            self._cancel(stream)
        if self._transport is not None:
            self._transport.close()


class GrpcServer:
    """A listening server and its connections. Resource handling: owns the listening socket and every
    connection; :meth:`stop` releases them (the socket file is the caller's)."""

    def __init__(self, methods: Mapping[str, Handler]) -> None:
        #: full method path (``/package.Service/Method``) -> handler
        self.methods = dict(methods)
        self.stopping = False
        self._listener: Optional[asyncio.AbstractServer] = None
        self._connections: set[_Connection] = set()
        self._stopped = asyncio.Event()

    def begin_stop(self) -> None:
        """Accept no more connections or calls (GOAWAY on each connection); calls in flight go on."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        for connection in list(self._connections):
            connection.goaway()

    async def stop(self, grace: Optional[float]) -> None:
        """:meth:`begin_stop`, give the calls in flight ``grace`` seconds (None: none), cancel the rest,
        close every connection."""
        self.begin_stop()
        calls = [task for c in self._connections for task in c.calls()]
        if calls and grace:
            await asyncio.wait(calls, timeout=grace)
        for connection in list(self._connections):
            connection.cancel_calls()
        calls = [task for c in self._connections for task in c.calls()]
        if calls:
            await asyncio.wait(calls)
        for connection in list(self._connections):
            connection.close()
        closing = [asyncio.ensure_future(c.closed.wait()) for c in list(self._connections)]
        if closing:
            _, unread = await asyncio.wait(closing, timeout=_CLOSE_TIMEOUT)
            for connection in list(self._connections):
                connection.close(now=True)  # a client that reads nothing must not hold the stop
            if unread:
                await asyncio.wait(unread)
        if self._listener is not None:
            await self._listener.wait_closed()
        self._stopped.set()

    async def wait_for_termination(self) -> None:
        """Block until :meth:`stop` has completed."""
        await self._stopped.wait()


async def serve_unix(path: str, methods: Mapping[str, Handler]) -> GrpcServer:
    """Serve ``methods`` on the unix socket ``path`` (which must not exist).

    :raise OSError: when the socket cannot be bound.
    """
    server = GrpcServer(methods)
    server._listener = await asyncio.get_running_loop().create_unix_server(lambda: _Connection(server), path)
    return server
