"""asyncio ttrpc client: concurrent unary calls and streams over one connection.

Client stream ids are odd and increase. A reader task routes responses and data frames to the
waiting call by stream id; when the connection drops every waiter fails with Unavailable.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Dict, Mapping, Optional, Sequence, Type, TypeVar, Union

from google.protobuf.message import DecodeError, Message

from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.errors import (Cancelled, DeadlineExceeded, Internal, KuasarError, ResourceExhausted,
                                  Unavailable, from_code)
from kuasar_shared.ttrpc import framing
from kuasar_shared.ttrpc.transport import ByteWriter, connect

__all__ = ["Client", "ClientStream"]

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Message)
MetadataT = Mapping[str, Union[str, Sequence[str]]]


class ClientStream:
    """The client side of one streaming call."""

    def __init__(self, client: "Client", stream_id: int) -> None:
        self._client = client
        self.stream_id = stream_id
        self._inbox: asyncio.Queue[Union[bytes, None, KuasarError]] = asyncio.Queue()
        self._done = False
        self._send_closed = False

    async def send(self, data: Union[bytes, Message]) -> None:
        if self._send_closed:
            raise RuntimeError("send after close_send")
        if isinstance(data, Message):
            data = data.SerializeToString()
        await self._client._write(self.stream_id, framing.TYPE_DATA, 0, data)

    async def close_send(self) -> None:
        if not self._send_closed:
            self._send_closed = True
            await self._client._write(self.stream_id, framing.TYPE_DATA,
                                      framing.FLAG_REMOTE_CLOSED | framing.FLAG_NO_DATA, b"")

    async def recv(self) -> Optional[bytes]:
        """Next data message from the server; None at the end of the stream.

        :raise KuasarError: the server ended the call with an error status, or the connection dropped.
        """
        if self._done and self._inbox.empty():
            return None
        item = await self._inbox.get()
        if isinstance(item, KuasarError):
            self._done = True
            raise item
        if item is None:
            self._done = True
        return item

    def _on_frame(self, frame: framing.Frame) -> None:
        if frame.type == framing.TYPE_DATA:
            if not frame.flags & framing.FLAG_NO_DATA:
                self._inbox.put_nowait(frame.data)
            if frame.flags & framing.FLAG_REMOTE_CLOSED:
                self._inbox.put_nowait(None)
            return
        self._client._streams.pop(self.stream_id, None)
        try:
            resp = request_pb2.Response.FromString(frame.data)
        except DecodeError as err:
            self._inbox.put_nowait(Internal(f"malformed ttrpc response: {err}"))
            return
        if resp.status.code:
            self._inbox.put_nowait(from_code(resp.status.code, resp.status.message))
        else:
            self._inbox.put_nowait(None)

    def _fail(self, err: KuasarError) -> None:
        self._inbox.put_nowait(err)

    async def aclose(self) -> None:
        """Forget the stream locally (the server sees our side closed)."""
        if not self._send_closed:
            try:
                await self.close_send()
            except (KuasarError, ConnectionError, OSError):
                pass
        self._client._streams.pop(self.stream_id, None)


class Client:
    """A ttrpc connection. Create with :meth:`connect` (or wrap any reader/writer pair)."""

    def __init__(self, reader: asyncio.StreamReader, writer: ByteWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next_id = 1
        self._lock = asyncio.Lock()
        self._pending: Dict[int, "asyncio.Future[framing.Frame]"] = {}
        self._streams: Dict[int, ClientStream] = {}
        self._closed: Optional[KuasarError] = None
        self._reader_task = asyncio.ensure_future(self._read_loop())

    @classmethod
    async def connect(cls, address: str, timeout: float = 10.0) -> "Client":
        """Connect to ``ttrpc+unix://``, ``unix://``, a bare path, ``vsock://`` or ``hvsock://``."""
        reader, writer = await connect(address, timeout)
        return cls(reader, writer)

    @classmethod
    async def connect_unix(cls, path: str, timeout: float = 10.0) -> "Client":
        return await cls.connect(path if path.startswith("/") else f"unix://{path}", timeout)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _allocate(self) -> int:
        sid = self._next_id
        self._next_id += 2
        return sid

    async def _write(self, stream_id: int, type_: int, flags: int, data: bytes) -> None:
        if self._closed is not None:
            raise self._closed
        frame = framing.encode(stream_id, type_, flags, data)
        async with self._lock:
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, OSError) as err:
                raise Unavailable(f"ttrpc connection lost: {err}") from err

    @staticmethod
    def _request(service: str, method: str, payload: bytes, timeout: Optional[float],
                 metadata: Optional[MetadataT]) -> bytes:
        req = request_pb2.Request(service=service, method=method, payload=payload)
        if timeout:
            req.timeout_nano = int(timeout * 1e9)
        for key, value in (metadata or {}).items():
            for v in ([value] if isinstance(value, str) else value):
                req.metadata.add(key=key, value=v)
        data = req.SerializeToString()
        if len(data) > framing.MAX_MESSAGE:
            raise ResourceExhausted(f"{service}/{method} request of {len(data)} bytes exceeds maximum message "
                                    f"size of {framing.MAX_MESSAGE}")
        return data

    async def call(self, service: str, method: str, request: Message, response_type: Type[M],
                   timeout: Optional[float] = None, metadata: Optional[MetadataT] = None) -> M:
        """One unary call.

        :raise KuasarError: the typed error for the status the server answered, DeadlineExceeded
            when ``timeout`` passes (also sent to the server as timeout_nano), Unavailable when the
            connection drops.
        """
        data = self._request(service, method, request.SerializeToString(), timeout, metadata)
        sid = self._allocate()
        fut: asyncio.Future[framing.Frame] = asyncio.get_running_loop().create_future()
        self._pending[sid] = fut
        try:
            await self._write(sid, framing.TYPE_REQUEST, 0, data)
            frame = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError as err:
            raise DeadlineExceeded(f"{service}/{method}: no answer within {timeout}s") from err
        finally:
            self._pending.pop(sid, None)
        try:
            resp = request_pb2.Response.FromString(frame.data)
        except DecodeError as err:
            raise Internal(f"{service}/{method}: malformed ttrpc response: {err}") from err
        if resp.status.code:
            raise from_code(resp.status.code, resp.status.message)
        return response_type.FromString(resp.payload)

    async def stream(self, service: str, method: str, request: Optional[Message] = None,
                     metadata: Optional[MetadataT] = None) -> ClientStream:
        """Open a stream. With ``request`` the stream is server-streaming (client side closed at once);
        without it the client sends data frames with :meth:`ClientStream.send`."""
        payload = request.SerializeToString() if request is not None else b""
        data = self._request(service, method, payload, None, metadata)
        sid = self._allocate()
        st = ClientStream(self, sid)
        self._streams[sid] = st
        flags = framing.FLAG_REMOTE_CLOSED if request is not None else framing.FLAG_REMOTE_OPEN
        if request is not None:
            st._send_closed = True
        try:
            await self._write(sid, framing.TYPE_REQUEST, flags, data)
        except BaseException:
            self._streams.pop(sid, None)
            raise
        return st

    async def _read_loop(self) -> None:
        reason: KuasarError = Unavailable("ttrpc connection closed by peer")
        try:
            while True:
                try:
                    frame = await framing.read_frame(self._reader)
                except framing.OversizedFrame as err:
                    self._fail_one(err.stream_id, err)
                    continue
                stream = self._streams.get(frame.stream_id)
                if stream is not None:
                    stream._on_frame(frame)
                    continue
                fut = self._pending.get(frame.stream_id)
                if fut is not None and not fut.done() and frame.type == framing.TYPE_RESPONSE:
                    fut.set_result(frame)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            reason = Cancelled("ttrpc client closed")
            raise
        finally:
            self._shutdown(reason)

    def _fail_one(self, stream_id: int, err: KuasarError) -> None:
        fut = self._pending.get(stream_id)
        if fut is not None and not fut.done():
            fut.set_exception(err)
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            stream._fail(err)

    def _shutdown(self, reason: KuasarError) -> None:
        if self._closed is None:
            self._closed = reason
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(self._closed)
        for stream in self._streams.values():
            stream._fail(self._closed)
        self._streams.clear()

    async def close(self) -> None:
        """Close the connection; calls in flight fail with Unavailable/Cancelled."""
        self._writer.close()
        self._reader_task.cancel()
        try:
            await self._reader_task
        except (asyncio.CancelledError, Exception):
            pass
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
