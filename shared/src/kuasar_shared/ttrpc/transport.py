"""Transports for ttrpc: everything that yields an (asyncio.StreamReader, :class:`ByteWriter`) pair.

The ttrpc client and server only ever see that pair, so new transports (the vmm guest's
virtio-serial multiplexer, for instance) plug in by producing one; :func:`connect` resolves the
address forms containerd uses: ``unix:///abs/path`` or a bare path, ``vsock://<cid>:<port>`` and
the hybrid vsock ``hvsock://<uds path>:<port>`` (``CONNECT <port>\\n`` / ``OK ...`` handshake).
"""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Any, Awaitable, Callable, Protocol, Tuple

from kuasar_shared.errors import InvalidArgument, Unavailable

__all__ = ["ByteWriter", "StreamPair", "connect", "parse_address", "start_unix_server"]


class ByteWriter(Protocol):
    """What the ttrpc client and server write to: an asyncio.StreamWriter, or one channel of the vmm mux."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...

    async def wait_closed(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


StreamPair = Tuple[asyncio.StreamReader, asyncio.StreamWriter]
_LIMIT = 1 << 16


def parse_address(address: str) -> tuple[str, str]:
    """Split ``[ttrpc+]scheme://rest`` (or a bare path) into (scheme, rest)."""
    if address.startswith("ttrpc+"):
        address = address[len("ttrpc+"):]
    if address.startswith("/"):
        return "unix", address
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("unix", "vsock", "hvsock"):
        raise InvalidArgument(f"unsupported ttrpc address {address!r}: expected unix://, vsock:// or hvsock://")
    return scheme, rest


async def connect(address: str, timeout: float = 10.0) -> StreamPair:
    """Open a connection to a ttrpc address.

    :raise Unavailable: the peer cannot be reached (message names the address).
    """
    scheme, rest = parse_address(address)
    try:
        return await asyncio.wait_for(_connect(scheme, rest), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as err:
        raise Unavailable(f"cannot connect to {address}: {err or type(err).__name__}") from err


async def _connect(scheme: str, rest: str) -> StreamPair:
    if scheme == "unix":
        return await asyncio.open_unix_connection(rest, limit=_LIMIT)
    if scheme == "vsock":
        cid, _, port = rest.rpartition(":")
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (int(cid), int(port)))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=_LIMIT)
    path, _, port = rest.rpartition(":")
    reader, writer = await asyncio.open_unix_connection(path, limit=_LIMIT)
    writer.write(f"CONNECT {int(port)}\n".encode())
    line = await reader.readline()
    if b"OK" not in line:
        writer.close()
        raise ConnectionRefusedError(f"hybrid vsock handshake refused: {line!r}")
    return reader, writer


async def start_unix_server(path: str, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                            mode: int = 0o600) -> asyncio.AbstractServer:
    """Listen on a unix socket, replacing a stale socket file; the socket is chmod'ed to ``mode``."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(handler, path, limit=_LIMIT)
    os.chmod(path, mode)
    return server
