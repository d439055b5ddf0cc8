"""Tests of kuasar_shared.grpcserver: the gRPC-over-HTTP/2 server, from grpcio's client and from a raw h2
client that drives the protocol edges (flow control, cancellation, deadlines, GOAWAY, bad frames)."""
from __future__ import annotations

import asyncio
import os
import tempfile
from typing import Any, AsyncIterator, Optional

import grpc
import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest
import pytest_asyncio

from kuasar_shared.errors import Code
from kuasar_shared.grpcserver import MAX_MESSAGE_SIZE, CallContext, GrpcServer, serve_unix

ECHO = "/test.Echo/Echo"
BLOCK = "/test.Echo/Block"
ABORT = "/test.Echo/Abort"
CRASH = "/test.Echo/Crash"


class Service:
    """Echo (the request, with a few facts of the call when it is b'facts'), Block (until released),
    Abort (with the request as message), Crash."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.cancelled = 0
        self.contexts: list[CallContext] = []

    async def echo(self, data: bytes, context: CallContext) -> bytes:
        self.contexts.append(context)
        return data

    async def block(self, data: bytes, context: CallContext) -> bytes:
        self.started += 1
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b"released"

    async def abort(self, data: bytes, context: CallContext) -> bytes:
        await context.abort(Code.FAILED_PRECONDITION, data.decode())

    async def crash(self, data: bytes, context: CallContext) -> bytes:
        raise RuntimeError("boom")

    def methods(self) -> dict[str, Any]:
        return {ECHO: self.echo, BLOCK: self.block, ABORT: self.abort, CRASH: self.crash}


@pytest.fixture
def service() -> Service:
    return Service()


@pytest_asyncio.fixture
async def server(service: Service) -> AsyncIterator[tuple[GrpcServer, str]]:
    with tempfile.TemporaryDirectory(prefix="kuasar-grpc-test-") as tmp:
        path = os.path.join(tmp, "s.sock")
        srv = await serve_unix(path, service.methods())
        try:
            yield srv, path
        finally:
            service.release.set()
            await srv.stop(None)


def frame(message: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(message).to_bytes(4, "big") + message


class RawClient:
    """An HTTP/2 client with prior knowledge that acknowledges received data only when told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, auto_ack: bool = True) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.auto_ack = auto_ack
        self.events: list[h2.events.Event] = []
        self.changed = asyncio.Event()
        self.conn.initiate_connection()
        self.flush()
        self._reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, path: str, auto_ack: bool = True) -> "RawClient":
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer, auto_ack)

    def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())

    async def _read(self) -> None:
        while True:
            data = await self.reader.read(65536)
            if not data:
                self.events.append(h2.events.ConnectionTerminated())
                self.changed.set()
                return
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if isinstance(event, h2.events.ConnectionTerminated) and event.error_code == 0:
                    # h2 takes GOAWAY for the end of the connection; HTTP/2 lets the streams up to
                    # last_stream_id finish (what grpc-go does), so keep receiving their frames
                    self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
                if isinstance(event, h2.events.DataReceived) and self.auto_ack:
                    self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
            self.flush()
            self.changed.set()

    async def until(self, predicate: Any, timeout: float = 10.0) -> h2.events.Event:
        """The first event so far or to come that matches ``predicate``."""
        async def look() -> h2.events.Event:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self.changed.clear()
                await self.changed.wait()
        return await asyncio.wait_for(look(), timeout)

    def request(self, method: str, body: Optional[bytes], extra: tuple[tuple[str, str], ...] = ()) -> int:
        """Start a call; ``body`` None leaves the request open (its data to be sent by the test)."""
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, [(":method", "POST"), (":scheme", "http"), (":path", method),
                                           (":authority", "localhost"), ("content-type", "application/grpc"),
                                           ("te", "trailers"), *extra])
        if body is not None:
            self.conn.send_data(stream_id, body, end_stream=True)
        self.flush()
        return stream_id

    async def status(self, stream_id: int) -> dict[str, str]:
        """The trailers (or trailers-only headers) of a stream."""
        def ended(event: h2.events.Event) -> bool:
            return (isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived))
                    and event.stream_id == stream_id and any(k == "grpc-status" for k, _ in event.headers or []))
        event = await self.until(ended)
        assert isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived))
        return {str(k): str(v) for k, v in event.headers or []}

    def body(self, stream_id: int) -> bytes:
        return b"".join(e.data or b"" for e in self.events
                        if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id)

    async def close(self) -> None:
        self._reading.cancel()
        self.writer.close()


@pytest_asyncio.fixture
async def client(server: tuple[GrpcServer, str]) -> AsyncIterator[RawClient]:
    """A raw HTTP/2 client connected to ``server`` (closed after the test)."""
    raw = await RawClient.connect(server[1])
    try:
        yield raw
    finally:
        await raw.close()


@pytest.mark.asyncio
async def test_grpcio_client_metadata_deadline_and_errors(server: tuple[GrpcServer, str], service: Service) -> None:
    _, path = server
    async with grpc.aio.insecure_channel("unix:" + path) as channel:
        echo = channel.unary_unary(ECHO)
        assert await echo(b"hello", metadata=(("traceparent", "00-ab-cd-01"),), timeout=30) == b"hello"
        context = service.contexts[-1]
        assert ("traceparent", "00-ab-cd-01") in context.invocation_metadata()
        remaining = context.time_remaining()
        assert remaining is not None and 20 < remaining <= 30
        assert await echo(b"") == b""
        assert service.contexts[-1].time_remaining() is None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(ABORT)("no: 100% sure\nü".encode())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert info.value.details() == "no: 100% sure\nü"  # percent-encoded on the wire, decoded back
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(CRASH)(b"")
        assert info.value.code() == grpc.StatusCode.UNKNOWN and "boom" in (info.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary("/test.Echo/Nope")(b"")
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.unary_unary(BLOCK)(b"", timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        big = os.urandom(3 << 20)
        assert await echo(big) == big


@pytest.mark.asyncio
async def test_many_concurrent_calls_on_one_connection(server: tuple[GrpcServer, str], service: Service) -> None:
    """More than h2's default of 100 concurrent streams: containerd holds one Wait per pod."""
    _, path = server
    async with grpc.aio.insecure_channel("unix:" + path) as channel:
        block = channel.unary_unary(BLOCK)
        calls = [asyncio.ensure_future(block(b"", timeout=60)) for _ in range(300)]
        while service.started < 300:
            await asyncio.sleep(0.02)
        service.release.set()
        assert await asyncio.gather(*calls) == [b"released"] * 300


@pytest.mark.asyncio
async def test_flow_control_both_ways(server: tuple[GrpcServer, str]) -> None:
    """A 300 KiB request goes out within the server's windows; the 300 KiB answer waits for the client's
    WINDOW_UPDATEs: before any, the server sends no more than the client's initial 64 KiB."""
    _, path = server
    client = await RawClient.connect(path, auto_ack=False)
    try:
        message = os.urandom(300 << 10)
        stream_id = client.request(ECHO, None)
        pending = frame(message)
        while pending:
            window = min(client.conn.local_flow_control_window(stream_id), client.conn.max_outbound_frame_size)
            if window <= 0:
                await client.until(lambda e: isinstance(e, h2.events.WindowUpdated))
                client.events = [e for e in client.events if not isinstance(e, h2.events.WindowUpdated)]
                continue
            client.conn.send_data(stream_id, pending[:window], end_stream=len(pending) <= window)
            pending = pending[window:]
            client.flush()
        await client.until(lambda e: isinstance(e, h2.events.DataReceived))
        await asyncio.sleep(0.3)
        assert 0 < len(client.body(stream_id)) <= 65535
        assert not any(isinstance(e, h2.events.TrailersReceived) for e in client.events)
        client.auto_ack = True
        for event in client.events:
            if isinstance(event, h2.events.DataReceived):
                client.conn.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)
        client.flush()
        assert (await client.status(stream_id))["grpc-status"] == "0"
        assert client.body(stream_id) == frame(message)
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_reset_stream_cancels_the_handler(client: RawClient, service: Service) -> None:
    stream_id = client.request(BLOCK, frame(b""))
    while service.started < 1:
        await asyncio.sleep(0.01)
    client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
    client.flush()
    while service.cancelled < 1:
        await asyncio.sleep(0.01)
    other = client.request(ECHO, frame(b"still serving"))
    assert (await client.status(other))["grpc-status"] == "0"
    assert client.body(other) == frame(b"still serving")


@pytest.mark.asyncio
async def test_deadline_and_malformed_requests(client: RawClient, service: Service) -> None:
    cases = [
        (BLOCK, frame(b""), (("grpc-timeout", "50m"),), "4"),  # DEADLINE_EXCEEDED, the handler cancelled
        (BLOCK, None, (("grpc-timeout", "50m"),), "4"),  # the request never completes
        (ECHO, frame(b""), (("grpc-timeout", "soon"),), "13"),
        ("/test.Echo/Nope", frame(b""), (), "12"),
        (ECHO, frame(b"x", flag=1), (), "12"),  # compressed: only identity is implemented
        (ECHO, frame(b"x"), (("grpc-encoding", "gzip"),), "12"),
        (ECHO, frame(b"abc")[:-1], (), "13"),  # truncated
        (ECHO, frame(b"a") + frame(b"b"), (), "13"),  # two messages in a unary call
        (ECHO, b"", (), "13"),  # no message
        (ECHO, frame(b"x", flag=7), (), "13"),
    ]
    statuses = []
    for method, body, extra, _ in cases:
        stream_id = client.request(method, body, extra)
        statuses.append((await client.status(stream_id)))
    assert [s["grpc-status"] for s in statuses] == [c[3] for c in cases], statuses
    assert all(s.get("grpc-message") for s in statuses)
    assert service.cancelled == 1
    huge = client.request(ECHO, None)
    client.conn.send_data(huge, frame(b"")[:1] + (MAX_MESSAGE_SIZE + 1).to_bytes(4, "big") + b"x" * 1000)
    client.flush()
    status = await client.status(huge)
    assert status["grpc-status"] == "8" and "larger than max" in status["grpc-message"]
    ok = client.request(ECHO, frame(b"fine"))
    assert (await client.status(ok))["grpc-status"] == "0"


@pytest.mark.asyncio
async def test_ping_is_answered(client: RawClient) -> None:
    client.conn.ping(b"12345678")
    client.flush()
    ack = await client.until(lambda e: isinstance(e, h2.events.PingAckReceived))
    assert isinstance(ack, h2.events.PingAckReceived) and ack.ping_data == b"12345678"


@pytest.mark.asyncio
async def test_stop_sends_goaway_and_lets_calls_in_flight_finish(server: tuple[GrpcServer, str],
                                                                  service: Service) -> None:
    srv, path = server
    client = await RawClient.connect(path)
    try:
        first = client.request(BLOCK, frame(b""))
        while service.started < 1:
            await asyncio.sleep(0.01)
        srv.begin_stop()
        goaway = await client.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert isinstance(goaway, h2.events.ConnectionTerminated)
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR and goaway.last_stream_id == first
        with pytest.raises(OSError):
            await asyncio.open_unix_connection(path)  # no new connections either
        stopping = asyncio.ensure_future(srv.stop(30))
        await asyncio.sleep(0.1)
        assert not stopping.done()
        service.release.set()
        await asyncio.wait_for(stopping, 10)
        assert client.body(first) == frame(b"released")  # answered after the GOAWAY
        assert service.cancelled == 0
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_new_stream_after_goaway_is_refused(server: tuple[GrpcServer, str], client: RawClient,
                                                  service: Service) -> None:
    client.request(BLOCK, frame(b""))
    while service.started < 1:
        await asyncio.sleep(0.01)
    server[0].begin_stop()
    late = client.request(ECHO, frame(b"late"))  # crossed the GOAWAY on the wire
    reset = await client.until(lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == late)
    assert isinstance(reset, h2.events.StreamReset) and reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM


@pytest.mark.asyncio
async def test_stop_without_grace_cancels_calls(server: tuple[GrpcServer, str], service: Service) -> None:
    srv, path = server
    async with grpc.aio.insecure_channel("unix:" + path) as channel:
        call = asyncio.ensure_future(channel.unary_unary(BLOCK)(b""))
        while service.started < 1:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(srv.stop(None), 10)
        assert service.cancelled == 1
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    await srv.wait_for_termination()


@pytest.mark.asyncio
async def test_bad_frame_closes_only_its_connection(server: tuple[GrpcServer, str], service: Service) -> None:
    _, path = server
    bad = await RawClient.connect(path)
    good = await RawClient.connect(path)
    try:
        blocked = bad.request(BLOCK, frame(b""))
        while service.started < 1:
            await asyncio.sleep(0.01)
        # a DATA frame on stream 0 is a connection error (PROTOCOL_ERROR)
        bad.writer.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        goaway = await bad.until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        assert isinstance(goaway, h2.events.ConnectionTerminated)
        assert goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        while service.cancelled < 1:  # its call went with it
            await asyncio.sleep(0.01)
        assert blocked not in {e.stream_id for e in bad.events if isinstance(e, h2.events.TrailersReceived)}
        ok = good.request(ECHO, frame(b"fine"))
        assert (await good.status(ok))["grpc-status"] == "0"
    finally:
        await bad.close()
        await good.close()


@pytest.mark.asyncio
async def test_not_grpc_is_refused(client: RawClient) -> None:
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"), (":path", ECHO),
                                         (":authority", "localhost")], end_stream=True)
    client.flush()
    response = await client.until(lambda e: isinstance(e, h2.events.ResponseReceived))
    assert isinstance(response, h2.events.ResponseReceived)
    assert dict(response.headers or [])[":status"] == "415"
