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


async def readable(fd: int) -> None:
    """Wait until ``fd`` is readable."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def writable(fd: int) -> None:
    """Wait until ``fd`` is writable."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(fd)


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
