"""The virtio-serial multiplexer over a real socketpair: ttrpc per channel, windows, bad frames, loss."""
import asyncio
import os
import socket
import struct

import pytest

from kuasar_shared import errors
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.ttrpc import Client, Server, Service
from kuasar_shared.ttrpc import mux as muxmod
from kuasar_shared.ttrpc.mux import (CLOSE, DATA, HEADER, INITIAL_WINDOW, MAX_DATA, OPEN, WINDOW, MuxConnection,
                                     MuxProtocolError)

SVC = "containerd.task.v3.Task"


async def _pair(sock):
    return await asyncio.open_connection(sock=sock)


@pytest.fixture
async def sockets():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


@pytest.fixture
async def pair(sockets):
    """(host mux, guest mux) joined by a socketpair."""
    hr, hw = await _pair(sockets[0])
    gr, gw = await _pair(sockets[1])
    host = MuxConnection(hr, hw, is_host=True)
    guest = MuxConnection(gr, gw, is_host=False)
    yield host, guest
    await host.close()
    await guest.close()


@pytest.fixture
async def raw_guest(sockets):
    """(raw reader, raw writer, guest mux): the test plays a misbehaving host."""
    rr, rw = await _pair(sockets[0])
    gr, gw = await _pair(sockets[1])
    guest = MuxConnection(gr, gw, is_host=False)
    yield rr, rw, guest
    await guest.close()
    rw.close()


def frame(cid, type_, payload=b""):
    return HEADER.pack(cid, type_, len(payload)) + payload


async def read_frame(reader):
    cid, type_, length = HEADER.unpack(await reader.readexactly(HEADER.size))
    return cid, type_, (await reader.readexactly(length)) if length else b""


def _service():
    svc = Service(SVC)

    async def state(ctx, req):
        if req.id.startswith("sleep"):
            await asyncio.sleep(float(req.id[5:]))
        return shim_pb2.StateResponse(id=req.id, pid=len(req.id), stdout=req.bundle)

    svc.unary("State", shim_pb2.CreateTaskRequest, state)
    return svc


async def test_ttrpc_over_many_channels(pair):
    host, guest = pair
    server = Server([_service()])
    serving = asyncio.ensure_future(guest.serve(server.serve_connection))
    clients = [Client(*(await host.open())) for _ in range(40)]
    big = "x" * (1 << 20)  # 1 MiB each way: several windows per call

    async def one(i, c):
        resp = await c.call(SVC, "State", shim_pb2.CreateTaskRequest(id=f"c{i}", bundle=big if i % 8 == 0 else ""),
                            shim_pb2.StateResponse, timeout=30)
        assert resp.id == f"c{i}"
        assert resp.stdout == (big if i % 8 == 0 else "")

    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    assert server.connection_count == 40
    await asyncio.gather(*(c.close() for c in clients))
    for _ in range(100):
        if host.channel_count == 0 and guest.channel_count == 0:
            break
        await asyncio.sleep(0.01)
    assert (host.channel_count, guest.channel_count) == (0, 0)
    await server.shutdown()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


async def test_concurrent_calls_on_one_channel_answer_out_of_order(pair):
    host, guest = pair
    server = Server([_service()])
    serving = asyncio.ensure_future(guest.serve(server.serve_connection))
    async with Client(*(await host.open())) as c:
        slow = asyncio.ensure_future(c.call(SVC, "State", shim_pb2.CreateTaskRequest(id="sleep0.3"),
                                            shim_pb2.StateResponse))
        fast = await c.call(SVC, "State", shim_pb2.CreateTaskRequest(id="fast"), shim_pb2.StateResponse)
        assert fast.id == "fast" and not slow.done()
        assert (await slow).id == "sleep0.3"
    await server.shutdown()
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


async def test_window_bounds_an_unread_channel_without_blocking_others(pair):
    host, guest = pair
    hr1, hw1 = await host.open()
    hr2, hw2 = await host.open()
    accepted = guest.accept()
    gr1, gw1 = await accepted.__anext__()
    gr2, gw2 = await accepted.__anext__()
    hw1.write(b"a" * (4 << 20))  # nobody reads channel 1 in the guest
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(hw1.drain(), 0.5)
    ch1 = guest._channels[gw1.channel_id]
    assert ch1.recv_allowed + ch1.unacked == INITIAL_WINDOW
    assert len(host._channels[hw1.channel_id].pending) > (4 << 20) - 2 * INITIAL_WINDOW
    hw2.write(b"ping")
    await hw2.drain()
    assert await gr2.readexactly(4) == b"ping"
    gw2.write(b"pong")
    assert await hr2.readexactly(4) == b"pong"
    got = await asyncio.wait_for(gr1.readexactly(4 << 20), 10)  # now the guest reads: credit flows again
    assert got == b"a" * (4 << 20)
    await asyncio.wait_for(hw1.drain(), 5)


async def test_close_is_eof_and_forgets_the_channel_on_both_sides(pair):
    host, guest = pair
    hr, hw = await host.open()
    gr, gw = await guest.accept().__anext__()
    hw.write(b"last words")
    hw.close()
    assert hw.is_closing()
    assert await gr.read() == b"last words"   # data before CLOSE, then EOF
    assert gw.is_closing()
    await asyncio.wait_for(hw.wait_closed(), 2)
    await asyncio.wait_for(gw.wait_closed(), 2)
    assert await hr.read() == b""
    with pytest.raises(ConnectionResetError):
        await gw.drain()
    assert host.channel_count == guest.channel_count == 0
    assert gw.get_extra_info("mux_channel") == hw.channel_id == 1


async def test_connection_loss_fails_every_channel(sockets):
    hr, hw = await _pair(sockets[0])
    gr, gw = await _pair(sockets[1])
    host = MuxConnection(hr, hw, is_host=True)
    guest = MuxConnection(gr, gw, is_host=False)
    chans = [await host.open() for _ in range(3)]
    accepted = []
    it = guest.accept()
    for _ in range(3):
        accepted.append(await it.__anext__())
    gw.transport.abort()  # the guest's stream dies
    reason = await asyncio.wait_for(host.wait_closed(), 2)
    assert isinstance(reason, ConnectionError)
    for reader, writer in chans:
        with pytest.raises(ConnectionError):
            await reader.read(1)
        with pytest.raises(ConnectionResetError):
            await writer.drain()
        assert writer.is_closing()
        await asyncio.wait_for(writer.wait_closed(), 1)
    with pytest.raises(errors.Unavailable):
        await host.open()
    await asyncio.wait_for(guest.wait_closed(), 2)
    assert [x async for x in it] == []
    await host.close()
    await guest.close()


async def test_ttrpc_client_fails_with_unavailable_on_loss(pair):
    host, guest = pair
    server = Server([_service()])
    serving = asyncio.ensure_future(guest.serve(server.serve_connection))
    c = Client(*(await host.open()))
    call = asyncio.ensure_future(c.call(SVC, "State", shim_pb2.CreateTaskRequest(id="sleep5"), shim_pb2.StateResponse))
    await asyncio.sleep(0.1)
    await guest.close()
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(call, 2)
    await asyncio.wait_for(serving, 2)  # serve returns once the mux is gone, handlers cancelled
    await c.close()
    await server.shutdown()


@pytest.mark.parametrize("bad, why", [
    (frame(2, 9), "unknown frame type 9"),
    (frame(0, OPEN), "reserved channel 0"),
    (HEADER.pack(1, DATA, MAX_DATA + 1), "exceeds"),
    (frame(1, WINDOW, b"\0\0"), "WINDOW frame with a 2-byte"),
    (frame(2, OPEN, b"x"), "payload"),
    (frame(1, OPEN), "already open"),
    (frame(3, OPEN) + frame(3, CLOSE) + frame(2, OPEN), "reuses channel id 2"),
    (frame(2, OPEN) + frame(2, CLOSE) + frame(2, CLOSE), "CLOSE received twice"),
    (frame(2, OPEN) + frame(2, CLOSE) + frame(2, DATA, b"x"), "DATA after CLOSE"),
    (frame(1, WINDOW, struct.pack(">I", 0xFFFFFFFF)), "overflows"),
    (frame(1, DATA, b"x" * 10)[:-3], "inside a frame"),
    (b"\0\0\0", "inside a frame header"),
])
async def test_malformed_frames_close_the_whole_mux(raw_guest, bad, why):
    rr, rw, guest = raw_guest
    rw.write(frame(1, OPEN))
    reader, writer = await guest.accept().__anext__()
    rw.write(bad)
    if why.startswith("inside"):
        rw.write_eof()
    reason = await asyncio.wait_for(guest.wait_closed(), 2)
    assert isinstance(reason, MuxProtocolError) and why in str(reason), reason
    with pytest.raises(ConnectionError):
        await reader.read(1)
    assert guest.closed


async def test_frames_for_an_unknown_channel_close_only_that_channel(raw_guest):
    """The host's channel 7 is one the guest does not know (it started over on the port): the guest
    answers with one CLOSE, ignores the host's CLOSE, and the mux and its other channels go on."""
    rr, rw, guest = raw_guest
    rw.write(frame(1, OPEN))
    reader, writer = await guest.accept().__anext__()
    rw.write(frame(7, DATA, b"x") + frame(7, WINDOW, struct.pack(">I", 10)) + frame(7, CLOSE) + frame(1, DATA, b"hi"))
    assert await asyncio.wait_for(reader.readexactly(2), 2) == b"hi"
    assert await asyncio.wait_for(rr.readexactly(HEADER.size), 2) == HEADER.pack(7, CLOSE, 0)
    assert not guest.closed


async def test_data_beyond_the_window_closes_the_mux(raw_guest):
    rr, rw, guest = raw_guest
    rw.write(frame(1, OPEN))
    reader, writer = await guest.accept().__anext__()
    for _ in range(16):  # the app reads nothing: its reader pauses and credit stops well below 1 MiB
        rw.write(frame(1, DATA, b"z" * MAX_DATA))
    reason = await asyncio.wait_for(guest.wait_closed(), 2)
    assert "exceed the remaining window" in str(reason)


async def test_guest_never_opens_and_host_refuses_open_frames(raw_guest, sockets):
    rr, rw, guest = raw_guest
    with pytest.raises(errors.FailedPrecondition):
        await guest.open()
    hr, hw = await _pair(socket.socketpair()[0])
    host = MuxConnection(hr, hw, is_host=True)
    with pytest.raises(errors.FailedPrecondition):
        await host.accept().__anext__()
    await host.close()
    # a host mux receiving OPEN from the guest closes
    a, b = socket.socketpair()
    hr, hw = await _pair(a)
    pr, pw = await _pair(b)
    host = MuxConnection(hr, hw, is_host=True)
    pw.write(frame(5, OPEN))
    reason = await asyncio.wait_for(host.wait_closed(), 2)
    assert "guest tried to open" in str(reason)
    await host.close()
    pw.close()
    a.close()
    b.close()


async def test_wire_format_and_window_grants(raw_guest):
    rr, rw, guest = raw_guest
    rw.write(frame(3, OPEN) + frame(3, DATA, b"hello"))
    reader, writer = await guest.accept().__anext__()
    assert await reader.readexactly(5) == b"hello"
    writer.write(b"y" * (MAX_DATA + 10))
    assert await read_frame(rr) == (3, DATA, b"y" * MAX_DATA)
    assert await read_frame(rr) == (3, DATA, b"y" * 10)
    for _ in range(INITIAL_WINDOW // MAX_DATA):
        rw.write(frame(3, DATA, b"q" * MAX_DATA))
    got = b""
    while len(got) < INITIAL_WINDOW:
        got += await reader.read(1 << 20)
    writer.close()
    credit = 0
    while True:  # the guest granted credit back as its app consumed, then CLOSE
        cid, type_, payload = await asyncio.wait_for(read_frame(rr), 2)
        if type_ == CLOSE:
            break
        assert (cid, type_) == (3, WINDOW)
        credit += struct.unpack(">I", payload)[0]
    assert (cid, payload) == (3, b"")
    assert INITIAL_WINDOW - INITIAL_WINDOW // 4 <= credit <= INITIAL_WINDOW + 5
    rw.write(frame(3, CLOSE))
    await asyncio.wait_for(writer.wait_closed(), 2)
    assert guest.channel_count == 0


async def test_host_respects_send_credit(sockets):
    hr, hw = await _pair(sockets[0])
    pr, pw = await _pair(sockets[1])
    host = MuxConnection(hr, hw, is_host=True)
    reader, writer = await host.open()
    assert await read_frame(pr) == (1, OPEN, b"")
    writer.write(os.urandom(INITIAL_WINDOW + 1000))
    sent = 0
    while sent < INITIAL_WINDOW:
        cid, type_, payload = await read_frame(pr)
        assert (cid, type_) == (1, DATA) and len(payload) <= MAX_DATA
        sent += len(payload)
    assert sent == INITIAL_WINDOW
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(read_frame(pr), 0.3)  # out of credit
    pw.write(frame(1, WINDOW, struct.pack(">I", 500)))
    cid, type_, payload = await read_frame(pr)
    assert (cid, type_, len(payload)) == (1, DATA, 500)
    await host.close()
    pw.close()


async def test_max_channels(sockets):
    hr, hw = await _pair(sockets[0])
    gr, gw = await _pair(sockets[1])
    host = MuxConnection(hr, hw, is_host=True, max_channels=2)
    guest = MuxConnection(gr, gw, is_host=False, max_channels=1)
    await host.open()
    r2, w2 = await host.open()
    with pytest.raises(errors.Unavailable):
        await host.open()
    assert await asyncio.wait_for(r2.read(), 2) == b""  # the guest refused the second channel
    await asyncio.wait_for(w2.wait_closed(), 2)
    assert host.channel_count == 1
    await host.close()
    await guest.close()


async def test_serve_closes_channel_when_handler_returns_and_survives_handler_errors(pair):
    host, guest = pair

    async def handler(reader, writer):
        data = await reader.readexactly(3)
        if data == b"bad":
            raise RuntimeError("handler bug")
        writer.write(data[::-1])

    serving = asyncio.ensure_future(guest.serve(handler))
    r1, w1 = await host.open()
    w1.write(b"bad")
    assert await asyncio.wait_for(r1.read(), 2) == b""
    r2, w2 = await host.open()
    w2.write(b"abc")
    assert await asyncio.wait_for(r2.read(), 2) == b"cba"
    assert not guest.closed
    serving.cancel()
    await asyncio.gather(serving, return_exceptions=True)


def test_repr_and_constants():
    assert HEADER.size == 9 and MAX_DATA == 65536 and INITIAL_WINDOW == 262144
    assert (OPEN, DATA, CLOSE, WINDOW) == (1, 2, 3, 4)
    assert "MuxConnection" in MuxConnection.__repr__.__qualname__
    assert muxmod.__all__
