"""Waiting on and writing to non-blocking file descriptors from asyncio, without a transport.

asyncio's pipe transports do not fit every fd: a write-pipe transport on a FIFO opened ``O_RDWR``
(how stdio FIFOs are held open without a reader) watches the fd for readability to learn that the
reader left, sees the data it wrote itself, and closes. These helpers only wait for the one event
they need.
"""
from __future__ import annotations

import asyncio
import os

__all__ = ["readable", "writable", "write_all"]


async def _ready(fd: int, reading: bool) -> None:
    loop = asyncio.get_running_loop()
    add, remove = (loop.add_reader, loop.remove_reader) if reading else (loop.add_writer, loop.remove_writer)
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)
    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


async def readable(fd: int) -> None:
    """Wait until ``fd`` is readable."""
    await _ready(fd, reading=True)


async def writable(fd: int) -> None:
    """Wait until ``fd`` is writable."""
    await _ready(fd, reading=False)


async def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the non-blocking ``fd``, waiting while it is full.

    :raise OSError: the write failed (e.g. EIO from a terminal whose other side is gone).
    """
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            await writable(fd)
