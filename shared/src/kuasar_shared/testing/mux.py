"""A ttrpc server reached through a real host/guest mux pair over a socketpair, as the vmm guest is."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import AsyncIterator

from kuasar_shared.ttrpc import Client, Server
from kuasar_shared.ttrpc.mux import MuxConnection

__all__ = ["mux_host", "mux_client"]


@contextlib.asynccontextmanager
async def mux_host(server: Server) -> AsyncIterator[MuxConnection]:
    """The host end of a mux whose guest end serves ``server``: each ``open()`` is one more client
    connection to it. Everything is closed and the server shut down after."""
    a, b = socket.socketpair()
    host = MuxConnection(*(await asyncio.open_connection(sock=a)), is_host=True)
    guest = MuxConnection(*(await asyncio.open_connection(sock=b)), is_host=False)
    serving = asyncio.ensure_future(guest.serve(server.serve_connection))
    try:
        yield host
    finally:
        await host.close()
        await guest.close()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await server.shutdown()
        a.close()
        b.close()


@contextlib.asynccontextmanager
async def mux_client(server: Server) -> AsyncIterator[Client]:
    """A client of ``server`` on one mux channel (see :func:`mux_host`)."""
    async with mux_host(server) as host:
        client = Client(*(await host.open()))
        try:
            yield client
        finally:
            await client.close()
