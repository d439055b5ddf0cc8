"""The Streaming client (open_stream, receive) against a real ttrpc server on a unix socket: the task
servers' StreamingHub, and a hand-written service for what the hub never sends."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Optional

import pytest
from google.protobuf import any_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.io.streamclient import data_message, open_stream, pack, receive
from kuasar_shared.io.streaming import SERVICE, StreamingHub
from kuasar_shared.ttrpc import Client, Server
from kuasar_shared.ttrpc.service import CallContext, Service, ServerStream


async def _serve(tmp_path: Path, service: Service) -> AsyncIterator[Client]:
    path = str(tmp_path / "task.sock")
    server = Server([service])
    await server.listen_unix(path)
    client = await Client.connect_unix(path)
    try:
        yield client
    finally:
        await client.close()
        await server.shutdown()


@pytest.fixture
async def hub_client(tmp_path: Path) -> AsyncIterator[tuple[StreamingHub, Client]]:
    hub = StreamingHub()
    async for client in _serve(tmp_path, hub.service()):
        yield hub, client


async def test_output_reaches_the_sink_until_the_process_output_ends(hub_client) -> None:
    hub, client = hub_client
    stream = await open_stream(client, "c1-stdout")
    endpoint = hub.endpoint("c1-stdout")
    for chunk in (b"hello ", b"", b"world", None):
        await endpoint.put(chunk)
    got: list[bytes] = []

    async def sink(data: bytes) -> None:
        got.append(data)
    await asyncio.wait_for(receive(stream, sink, grant_window=True), 10)
    assert got == [b"hello ", b"world"]


async def test_stdin_sent_with_data_message_reaches_the_process(hub_client) -> None:
    hub, client = hub_client
    stream = await open_stream(client, "c1-stdin", window=None)
    await stream.send(data_message(b"typed"))
    await stream.close_send()
    endpoint = hub.endpoint("c1-stdin")
    assert await asyncio.wait_for(endpoint.get(), 10) == b"typed"
    assert await asyncio.wait_for(endpoint.get(), 10) is None


async def test_other_messages_go_to_their_handler(tmp_path: Path) -> None:
    async def shell(ctx: CallContext, stream: ServerStream) -> None:
        await stream.recv()  # StreamInit
        await stream.send(pack(transfer_pb2.Data(data=b"prompt$ ")))
        await stream.send(pack(shim_pb2.WaitResponse(exit_status=3)))
    service = Service(SERVICE)
    service.stream("Stream", shell)
    async for client in _serve(tmp_path, service):
        stream = await client.stream(SERVICE, "Stream")
        await stream.send(data_message(b"init"))
        shown: list[bytes] = []
        others: list[any_pb2.Any] = []

        async def show(data: bytes, into: list[bytes] = shown) -> None:
            into.append(data)
        await asyncio.wait_for(receive(stream, show, others.append), 10)
        assert shown == [b"prompt$ "]
        (done,) = others
        assert done.Is(shim_pb2.WaitResponse.DESCRIPTOR)


async def test_a_stream_closed_during_the_handshake_is_an_error(tmp_path: Path) -> None:
    async def refuse(ctx: CallContext, stream: ServerStream) -> Optional[None]:
        await stream.recv()
        return None
    service = Service(SERVICE)
    service.stream("Stream", refuse)
    async for client in _serve(tmp_path, service):
        with pytest.raises(InvalidArgument, match="c9-stdout during the handshake"):
            await open_stream(client, "c9-stdout")
