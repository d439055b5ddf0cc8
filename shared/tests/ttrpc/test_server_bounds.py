"""ttrpc Server bounds and graceful stop (issue 14): a connection limit, and drain() waiting for calls with
effects but not for long-held ones."""
from __future__ import annotations

import asyncio

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.ttrpc import Client, Server, Service

SVC = "containerd.task.v3.Task"


def _service(release: asyncio.Event) -> Service:
    svc = Service(SVC)

    async def slow(ctx, req):  # type: ignore[no-untyped-def]
        await release.wait()
        return shim_pb2.StartResponse(pid=7)

    async def wait(ctx, req):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()

    svc.unary("Start", shim_pb2.StartRequest, slow)
    svc.unary("Wait", shim_pb2.WaitRequest, wait)
    return svc


async def test_connections_beyond_the_limit_are_closed(tmp_path) -> None:
    server = Server([_service(asyncio.Event())], max_connections=2)
    path = str(tmp_path / "s.sock")
    await server.listen_unix(path)
    kept = [await Client.connect_unix(path) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
        assert server.connection_count == 2
    finally:
        for client in kept:
            await client.close()
        await server.shutdown()


async def test_drain_waits_for_calls_with_effects_not_for_held_waits(tmp_path) -> None:
    release = asyncio.Event()
    server = Server([_service(release)])
    path = str(tmp_path / "s.sock")
    await server.listen_unix(path)
    client = await Client.connect_unix(path)
    try:
        start = asyncio.ensure_future(client.call(SVC, "Start", shim_pb2.StartRequest(id="c"), shim_pb2.StartResponse))
        held = asyncio.ensure_future(client.call(SVC, "Wait", shim_pb2.WaitRequest(id="c"), shim_pb2.WaitResponse))
        await asyncio.sleep(0.1)
        server.stop_listening()
        assert not await server.drain(0.2, keep=("Wait",))
        draining = asyncio.ensure_future(server.drain(10, keep=("Wait",)))
        release.set()
        assert await draining
        assert (await start).pid == 7 and not held.done()
    finally:
        await client.close()
        await server.shutdown()
