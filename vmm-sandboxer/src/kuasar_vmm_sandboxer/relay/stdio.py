"""Bridges between host stdio FIFOs (containerd ``io_type = "fifo"``, iSulad) and guest Streaming ids.

Processes in the guest only have streaming stdio; when an engine hands FIFO paths to the relay, the
relay rewrites them to streaming URLs and copies between each FIFO and a
``containerd.services.streaming.v1.Streaming/Stream`` call to the guest (its own mux channel).
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from typing import Awaitable, Callable, Optional, Tuple

from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.fdio import write_all
from kuasar_shared.io.streamclient import data_message, open_stream, receive
from kuasar_shared.ttrpc import Client, ClientStream

__all__ = ["StdioBridge", "guest_url"]

log = logging.getLogger(__name__)
_CHUNK = 32768
_EOF_ACK_SECONDS = 5.0
#: backoff between attempts to open a lost output stream again
_RETRY_FIRST, _RETRY_MAX = 0.1, 2.0
Opener = Callable[[], Awaitable[Tuple[asyncio.StreamReader, object]]]


def guest_url(stream_id: str) -> str:
    """The stdio string the guest gets for a bridged FIFO."""
    return "ttrpc+vsock://kuasar:1024?streaming_id=" + stream_id


def _open_fifo(path: str, flags: int) -> int:
    if not os.path.isabs(path):
        raise InvalidArgument("stdio path %r must be absolute" % path)
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        raise InvalidArgument("cannot open stdio FIFO %s: %s" % (path, err.strerror)) from err
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument("stdio path %s is not a FIFO" % path)
    return fd


class StdioBridge:
    """One FIFO <-> one guest stream id. ``direction`` is ``"in"`` (FIFO -> guest) or ``"out"``.

    Resource handling: :meth:`open` opens the FIFO (errors reach the task Create/Exec caller);
    :meth:`run` copies until either end finishes and closes both; cancel it to stop early.
    """

    def __init__(self, stream_id: str, path: str, direction: str, connect: Callable[[], Awaitable[Client]]) -> None:
        self.stream_id = stream_id
        self.path = path
        self.direction = direction
        self._connect = connect
        self._fd: Optional[int] = None
        #: the input copy's pipe transport owns the FIFO fd (and closes it)
        self._input_taken = False

    def open(self) -> None:
        self._fd = _open_fifo(self.path, os.O_RDONLY if self.direction == "in" else os.O_RDWR)

    async def run(self) -> None:
        """Copy until the guest ends the stream (the process's output ended), then close the FIFO.

        Output: a guest stream lost with its channel (the VM channel reconnected, the guest started
        over on its port) is opened again, with backoff, until the copy ends or the bridge is
        cancelled; the guest keeps the output written meanwhile. Input is copied once.
        """
        fd, self._fd = self._fd, None
        if fd is None:
            return
        delay = _RETRY_FIRST
        try:
            while True:
                try:
                    await self._copy(fd)
                    return
                except KuasarError as err:
                    if self.direction == "in":
                        log.info("stdio %s: guest stream ended: %s", self.stream_id, err)
                        return
                    log.info("stdio %s: guest stream lost (%s); opening it again", self.stream_id, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
        finally:
            if not self._input_taken:
                os.close(fd)

    async def _copy(self, fd: int) -> None:
        """One guest stream. The input copy takes ``fd`` over (its pipe transport closes it)."""
        client = await self._connect()
        try:
            stream = await open_stream(client, self.stream_id, window=None)
            if self.direction == "out":
                await self._to_fifo(stream, fd)
            else:
                await self._from_fifo(stream, fd)
        finally:
            await client.close()

    async def _to_fifo(self, stream: ClientStream, fd: int) -> None:
        """Guest output into the FIFO. Not through an asyncio write-pipe transport: on this ``O_RDWR``
        FIFO it would take the data it wrote itself, unread yet, for the reader's close and stop."""
        async def write(data: bytes) -> None:
            await write_all(fd, data)
        await receive(stream, write)

    async def _from_fifo(self, stream: ClientStream, fd: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        self._input_taken = True
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                    os.fdopen(fd, "rb", 0))

        async def drain_windows() -> None:
            while await stream.recv() is not None:
                pass
        windows = asyncio.ensure_future(drain_windows())
        try:
            while True:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    break
                await stream.send(data_message(chunk))
            await stream.close_send()
            # the guest ends its side once it handled EOF; closing the connection earlier can make it
            # drop the stream before the EOF reached the process
            await asyncio.wait([windows], timeout=_EOF_ACK_SECONDS)
        finally:
            transport.close()
            windows.cancel()
            await asyncio.gather(windows, return_exceptions=True)
