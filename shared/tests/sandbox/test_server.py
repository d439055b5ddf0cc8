"""Tests of kuasar_shared.sandbox.server: the unix socket, its mode, message limits, stop."""
from __future__ import annotations

import asyncio
import os
import socket
import stat
import tempfile
from typing import Iterator

import grpc
import pytest

from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.errors import Unavailable
from kuasar_shared.sandbox.server import MAX_MESSAGE_SIZE, serve_sandbox_api
from kuasar_shared.testing.conformance import SandboxApiClient, expect_code
from kuasar_shared.testing.memory import InMemorySandboxer


@pytest.fixture
def sock_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="kuasar-srv-test-") as tmp:
        yield tmp


@pytest.mark.asyncio
async def test_socket_mode_parent_and_stale_file(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "nested", "dir", "s.sock")
    os.makedirs(os.path.dirname(path))
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    server = await serve_sandbox_api("unix://" + path, InMemorySandboxer())
    try:
        assert server.path == path and server.address == "unix://" + path
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        client = SandboxApiClient(server.address)
        await client.create(sandbox_pb2.ControllerCreateRequest(sandbox_id="p1"))
        await client.close()
        assert "serving" in repr(server)
    finally:
        await server.stop(None)
    assert not os.path.exists(path)
    await server.stop(None)
    assert "stopped" in repr(server)


@pytest.mark.asyncio
async def test_creates_missing_parent(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "a", "b", "s.sock")
    server = await serve_sandbox_api(path, InMemorySandboxer())
    await server.stop(None)
    assert os.path.isdir(os.path.dirname(path))


@pytest.mark.asyncio
async def test_large_messages_accepted(sock_dir: str) -> None:
    server = await serve_sandbox_api(os.path.join(sock_dir, "s.sock"), InMemorySandboxer())
    client = SandboxApiClient(server.address)
    try:
        big = {"k%d" % i: "v" * 1000 for i in range(8000)}  # ~8 MiB: above gRPC's 4 MiB default
        await client.create(sandbox_pb2.ControllerCreateRequest(sandbox_id="big", annotations=big))
        assert (await client.start("big")).pid > 0
        too_big = {"k": "v" * (MAX_MESSAGE_SIZE + 1)}
        await expect_code(client.create(sandbox_pb2.ControllerCreateRequest(sandbox_id="huge",
                                                                            annotations=too_big)),
                          grpc.StatusCode.RESOURCE_EXHAUSTED)
        assert (await client.status("big")).state == "SANDBOX_READY"
    finally:
        await client.close()
        await server.stop(None)


@pytest.mark.asyncio
async def test_unbindable_path_is_unavailable(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "x" * 120, "s.sock")  # longer than sun_path allows
    with pytest.raises(Unavailable, match="cannot listen on"):
        await serve_sandbox_api(path, InMemorySandboxer())


@pytest.mark.asyncio
async def test_empty_listen_rejected() -> None:
    with pytest.raises(ValueError):
        await serve_sandbox_api("unix://", InMemorySandboxer())


@pytest.mark.asyncio
async def test_stop_releases_pending_waits_instead_of_sitting_out_the_grace(sock_dir: str) -> None:
    """A restart must not cost the grace period: containerd holds one Wait per pod for the pod's life,
    so stop ends those at once with UNAVAILABLE, the code containerd retries on (any other would make it
    record the pod as exited), while an ordinary call would still get its grace to finish."""
    sandboxer = InMemorySandboxer()
    server = await serve_sandbox_api(os.path.join(sock_dir, "s.sock"), sandboxer)
    client = SandboxApiClient(server.address)
    try:
        await client.create(sandbox_pb2.ControllerCreateRequest(sandbox_id="p1"))
        await client.start("p1")
        waiting = asyncio.ensure_future(client.wait("p1"))
        while not server._controller._waits:
            await asyncio.sleep(0.01)
        await asyncio.wait_for(server.stop(3600), timeout=60)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await waiting
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # what containerd retries on
        assert "restarting" in info.value.details()
        assert (await sandboxer.status("p1")).ready
    finally:
        await client.close()
        await server.stop(None)
