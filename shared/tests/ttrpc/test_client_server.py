"""ttrpc server and client over a real unix socket: unary, streams, errors, deadlines, bad input."""
import asyncio
import os

import pytest

from kuasar_shared import errors
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.ttrpc import Client, Server, Service, framing

SVC = "containerd.task.v3.Task"


def _service(log):
    svc = Service(SVC)

    async def state(ctx, req):
        log.append((req.id, ctx.get("containerd-namespace-ttrpc")))
        if req.id == "missing":
            raise errors.NotFound(f"container {req.id} not found")
        if req.id == "boom":
            raise RuntimeError("unexpected")
        if req.id.startswith("sleep"):
            await asyncio.sleep(float(req.id[5:]))
        return shim_pb2.StateResponse(id=req.id, pid=42)

    async def echo(ctx, stream):
        while True:
            msg = await stream.recv()
            if msg is None:
                break
            await stream.send(msg.upper())
        await stream.close_send()
        return None

    svc.unary("State", shim_pb2.StateRequest, state)
    svc.stream("Echo", echo)
    return svc


@pytest.fixture
async def server(tmp_path):
    log = []
    srv = Server([_service(log)])
    path = str(tmp_path / "t.sock")
    await srv.listen_unix(path)
    srv.log = log
    srv.path = path
    yield srv
    await srv.shutdown()


@pytest.mark.asyncio
async def test_unary_metadata_and_socket_mode(server):
    assert oct(os.stat(server.path).st_mode & 0o777) == "0o600"
    async with await Client.connect(f"ttrpc+unix://{server.path}") as c:
        resp = await c.call(SVC, "State", shim_pb2.StateRequest(id="c1"), shim_pb2.StateResponse,
                            metadata={"containerd-namespace-ttrpc": "k8s.io"})
    assert (resp.id, resp.pid) == ("c1", 42)
    assert server.log == [("c1", "k8s.io")]


@pytest.mark.asyncio
async def test_error_codes(server):
    async with await Client.connect_unix(server.path) as c:
        with pytest.raises(errors.NotFound, match="container missing not found"):
            await c.call(SVC, "State", shim_pb2.StateRequest(id="missing"), shim_pb2.StateResponse)
        with pytest.raises(errors.Internal, match="unexpected"):
            await c.call(SVC, "State", shim_pb2.StateRequest(id="boom"), shim_pb2.StateResponse)
        with pytest.raises(errors.Unimplemented):
            await c.call("containerd.task.v2.Task", "State", shim_pb2.StateRequest(), shim_pb2.StateResponse)
        with pytest.raises(errors.Unimplemented):
            await c.call(SVC, "Nope", shim_pb2.StateRequest(), shim_pb2.StateResponse)
        # still serving
        assert (await c.call(SVC, "State", shim_pb2.StateRequest(id="x"), shim_pb2.StateResponse)).pid == 42


@pytest.mark.asyncio
async def test_concurrent_calls_out_of_order(server):
    async with await Client.connect_unix(server.path) as c:
        ids = [f"sleep{0.3 - i * 0.01:.2f}" for i in range(30)]
        results = await asyncio.gather(*(c.call(SVC, "State", shim_pb2.StateRequest(id=i), shim_pb2.StateResponse)
                                         for i in ids))
    assert [r.id for r in results] == ids
    assert server.log[0][0] == ids[0]


@pytest.mark.asyncio
async def test_deadline_from_timeout_nano(server):
    async with await Client.connect_unix(server.path) as c:
        with pytest.raises(errors.DeadlineExceeded):
            await c.call(SVC, "State", shim_pb2.StateRequest(id="sleep5"), shim_pb2.StateResponse, timeout=0.2)
        # the server side also gave up: a raw request with timeout_nano answers DEADLINE_EXCEEDED
    reader, writer = await asyncio.open_unix_connection(server.path)
    req = request_pb2.Request(service=SVC, method="State",
                              payload=shim_pb2.StateRequest(id="sleep5").SerializeToString(), timeout_nano=100_000_000)
    writer.write(framing.encode(1, framing.TYPE_REQUEST, 0, req.SerializeToString()))
    frame = await asyncio.wait_for(framing.read_frame(reader), 3)
    assert request_pb2.Response.FromString(frame.data).status.code == errors.Code.DEADLINE_EXCEEDED
    writer.close()


@pytest.mark.asyncio
async def test_bidirectional_stream(server):
    async with await Client.connect_unix(server.path) as c:
        st = await c.stream(SVC, "Echo")
        assert st.stream_id % 2 == 1
        await st.send(b"abc")
        assert await st.recv() == b"ABC"
        await st.send(b"")
        assert await st.recv() == b""
        await st.close_send()
        assert await st.recv() is None


async def _raw(path, frames: bytes, n=1):
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(frames)
    out = [await asyncio.wait_for(framing.read_frame(reader), 5) for _ in range(n)]
    writer.close()
    return out


@pytest.mark.asyncio
async def test_malformed_inputs_keep_server_serving(server):
    # garbage Request envelope
    (f,) = await _raw(server.path, framing.encode(1, framing.TYPE_REQUEST, 0, b"\xff\xff\xff"))
    assert request_pb2.Response.FromString(f.data).status.code == errors.Code.INVALID_ARGUMENT
    # garbage method payload
    req = request_pb2.Request(service=SVC, method="State", payload=b"\x0a\xff")
    (f,) = await _raw(server.path, framing.encode(3, framing.TYPE_REQUEST, 0, req.SerializeToString()))
    assert request_pb2.Response.FromString(f.data).status.code == errors.Code.INVALID_ARGUMENT
    # even stream id
    good = request_pb2.Request(service=SVC, method="State", payload=shim_pb2.StateRequest(id="a").SerializeToString())
    (f,) = await _raw(server.path, framing.encode(2, framing.TYPE_REQUEST, 0, good.SerializeToString()))
    assert f.stream_id == 2 and request_pb2.Response.FromString(f.data).status.code == errors.Code.INVALID_ARGUMENT
    # oversized frame, then a good request on the same connection
    big = framing.HEADER.pack(framing.MAX_MESSAGE + 1, 5, framing.TYPE_REQUEST, 0) + b"\0" * (framing.MAX_MESSAGE + 1)
    f1, f2 = await _raw(server.path, big + framing.encode(7, framing.TYPE_REQUEST, 0, good.SerializeToString()), 2)
    by_id = {f1.stream_id: f1, f2.stream_id: f2}
    resp5 = request_pb2.Response.FromString(by_id[5].data)
    assert resp5.status.code == errors.Code.RESOURCE_EXHAUSTED and "4194304" in resp5.status.message
    assert shim_pb2.StateResponse.FromString(request_pb2.Response.FromString(by_id[7].data).payload).pid == 42
    async with await Client.connect_unix(server.path) as c:
        assert (await c.call(SVC, "State", shim_pb2.StateRequest(id="z"), shim_pb2.StateResponse)).id == "z"


@pytest.mark.asyncio
async def test_client_refuses_oversized_request(server):
    async with await Client.connect_unix(server.path) as c:
        with pytest.raises(errors.ResourceExhausted):
            await c.call(SVC, "State", shim_pb2.StateRequest(id="x" * (framing.MAX_MESSAGE + 1)),
                         shim_pb2.StateResponse)
        assert (await c.call(SVC, "State", shim_pb2.StateRequest(id="y"), shim_pb2.StateResponse)).id == "y"


@pytest.mark.asyncio
async def test_client_disconnect_mid_call_cancels_handler(server):
    c = await Client.connect_unix(server.path)
    call = asyncio.ensure_future(c.call(SVC, "State", shim_pb2.StateRequest(id="sleep30"), shim_pb2.StateResponse))
    await asyncio.sleep(0.1)
    assert server.connection_count == 1
    await c.close()
    with pytest.raises(errors.KuasarError):
        await call
    for _ in range(50):
        if server.connection_count == 0:
            break
        await asyncio.sleep(0.02)
    assert server.connection_count == 0
    async with await Client.connect_unix(server.path) as c2:
        assert (await c2.call(SVC, "State", shim_pb2.StateRequest(id="q"), shim_pb2.StateResponse)).id == "q"


@pytest.mark.asyncio
async def test_server_going_away_fails_pending_calls(tmp_path):
    srv = Server([_service([])])
    path = str(tmp_path / "s.sock")
    await srv.listen_unix(path)
    c = await Client.connect_unix(path)
    call = asyncio.ensure_future(c.call(SVC, "State", shim_pb2.StateRequest(id="sleep30"), shim_pb2.StateResponse))
    await asyncio.sleep(0.1)
    await srv.shutdown()
    with pytest.raises(errors.Unavailable):
        await asyncio.wait_for(call, 5)
    await c.close()


@pytest.mark.asyncio
async def test_connect_errors_name_the_address(tmp_path):
    with pytest.raises(errors.Unavailable, match="nothing.sock"):
        await Client.connect(f"ttrpc+unix://{tmp_path}/nothing.sock")
    with pytest.raises(errors.InvalidArgument):
        await Client.connect("tcp://127.0.0.1:1")


@pytest.mark.asyncio
async def test_hybrid_vsock_handshake(tmp_path):
    """hvsock:// = unix socket + 'CONNECT <port>' line handshake, then plain ttrpc."""
    srv = Server([_service([])])
    path = str(tmp_path / "h.sock")

    async def handshake(reader, writer):
        line = await reader.readline()
        assert line == b"CONNECT 1024\n"
        writer.write(b"OK 1073741824\n")
        await srv.serve_connection(reader, writer)

    listener = await asyncio.start_unix_server(handshake, path)
    async with await Client.connect(f"ttrpc+hvsock://{path}:1024") as c:
        assert (await c.call(SVC, "State", shim_pb2.StateRequest(id="v"), shim_pb2.StateResponse)).pid == 42
    listener.close()
    await srv.shutdown()


@pytest.mark.asyncio
async def test_calls_know_their_connection_and_its_close(tmp_path):
    """Handlers see one Connection per client connection; its close callbacks run when the client
    goes away (and at once for a connection already closed)."""
    seen, closed = [], []
    svc = Service(SVC)

    async def state(ctx, req):
        if ctx.connection not in seen:
            seen.append(ctx.connection)
            ctx.connection.on_close(lambda: closed.append(req.id))
        return shim_pb2.StateResponse(id=req.id)

    svc.unary("State", shim_pb2.StateRequest, state)
    srv = Server([svc])
    path = str(tmp_path / "c.sock")
    await srv.listen_unix(path)
    try:
        for name in ("a", "b"):
            async with await Client.connect(f"ttrpc+unix://{path}") as c:
                for _ in range(2):
                    await c.call(SVC, "State", shim_pb2.StateRequest(id=name), shim_pb2.StateResponse)
                assert closed == (["a"] if name == "b" else [])
            for _ in range(100):
                if name in closed:
                    break
                await asyncio.sleep(0.01)
        assert len(seen) == 2 and seen[0] is not seen[1] and closed == ["a", "b"]
        late = []
        seen[0].on_close(lambda: late.append(1))
        assert late == [1] and seen[0].closed
    finally:
        await srv.shutdown()
