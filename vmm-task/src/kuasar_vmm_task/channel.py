"""How the host reaches the agent: the virtio-serial port "kuasar.agent" (multiplexed) or vsock 1024.

The port is found by name under /sys/class/virtio-ports (there is no udev in the guest to make the
/dev/virtio-ports/<name> link); a hypervisor that cannot name ports (StratoVirt's virtserialport has
only id, chardev and nr) puts the agent at port number 1 with no name (:func:`find_unnamed_port`).
While no host process is connected to the port's chardev socket, the port reports POLLHUP and reads
return EOF, so the agent waits for POLLHUP to clear, runs one
:class:`~kuasar_shared.ttrpc.mux.MuxConnection` until the host goes away (every channel fails with
it), and waits again: a restarted host relay simply reconnects.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import socket
from typing import Awaitable, Callable, Optional, Tuple

from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_shared.ttrpc.transport import ByteWriter

__all__ = ["PORT_NAME", "VSOCK_PORT", "UNNAMED_AGENT_PORT", "find_port", "find_unnamed_port", "host_connected",
           "open_port", "serve_port", "listen_vsock"]

log = logging.getLogger(__name__)

PORT_NAME = "kuasar.agent"
VSOCK_PORT = 1024
#: the port number (virtserialport ``nr``) of the agent's port when the hypervisor cannot name it
UNNAMED_AGENT_PORT = 1
_VMADDR_CID_ANY = 0xFFFFFFFF
_POLL_INTERVAL = 0.02
_BUSY_TRIES = 250

#: gets each channel as (reader, writer), as Server.serve_connection takes them
Handler = Callable[[asyncio.StreamReader, ByteWriter], Awaitable[None]]


def find_port(name: str = PORT_NAME, sys_dir: str = "/sys/class/virtio-ports", dev_dir: str = "/dev") -> Optional[str]:
    """``/dev/vportNpM`` of the port called ``name``, or None when the VM has no such port."""
    try:
        entries = sorted(os.listdir(sys_dir))
    except FileNotFoundError:
        return None
    for entry in entries:
        try:
            with open(os.path.join(sys_dir, entry, "name")) as handle:
                if handle.read().strip() == name:
                    return os.path.join(dev_dir, entry)
        except OSError:
            continue
    return None


def find_unnamed_port(number: int = UNNAMED_AGENT_PORT, sys_dir: str = "/sys/class/virtio-ports",
                      dev_dir: str = "/dev") -> Optional[str]:
    """``/dev/vportNp<number>`` of the first virtio-serial device whose port ``number`` has no name (the
    kernel makes a port's ``name`` file only when the host names it), or None."""
    try:
        entries = sorted(os.listdir(sys_dir))
    except FileNotFoundError:
        return None
    for entry in entries:
        if entry.startswith("vport") and entry.endswith("p%d" % number) and \
                not os.path.exists(os.path.join(sys_dir, entry, "name")):
            return os.path.join(dev_dir, entry)
    return None


def host_connected(fd: int) -> bool:
    """True when a host process holds the other end (no POLLHUP on the port)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLOUT)
    return not any(ev & select.POLLHUP for _fd, ev in poller.poll(0))


async def _open_exclusive(path: str) -> int:
    """Open the port, which takes one opener at a time: the previous session's fds close a loop
    iteration after their transports, so EBUSY is waited out (a few seconds at most)."""
    for _ in range(_BUSY_TRIES):
        try:
            return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as err:
            if err.errno != errno.EBUSY:
                raise
        await asyncio.sleep(_POLL_INTERVAL)
    return os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)


async def open_port(path: str) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.BaseTransport]:
    """Open the port, wait until the host is connected and wrap it as an asyncio stream pair.

    Returns (reader, writer, read transport); the caller closes the writer and the read transport,
    which closes the port.
    """
    fd = await _open_exclusive(path)
    try:
        while not host_connected(fd):
            await asyncio.sleep(_POLL_INTERVAL)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 16)
        rfile = os.fdopen(os.dup(fd), "rb", buffering=0)
        rtransport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), rfile)
        wfile = os.fdopen(fd, "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise
    transport, protocol = await loop.connect_write_pipe(lambda: _WriteProtocol(loop), wfile)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, rtransport


class _WriteProtocol(asyncio.streams.FlowControlMixin):
    """Flow control for the write side (StreamWriter.drain needs it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._closed = loop.create_future()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> "asyncio.Future[None]":
        return self._closed


async def serve_port(path: str, handler: Handler) -> None:
    """Serve mux channels on the port with ``handler`` for ever, reconnecting after each host."""
    while True:
        reader, writer, rtransport = await open_port(path)
        log.info("host connected on %s", path)
        mux = MuxConnection(reader, writer, is_host=False)
        try:
            await mux.serve(handler)
        finally:
            await mux.close()
            rtransport.close()
        log.info("host left %s (%s); waiting for the next connection", path, await mux.wait_closed())


async def listen_vsock(handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                       port: int = VSOCK_PORT) -> Optional[asyncio.AbstractServer]:
    """Plain ttrpc on AF_VSOCK ``port``; None when the guest has no vsock device."""
    family = getattr(socket, "AF_VSOCK", None)
    if family is None:
        return None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((_VMADDR_CID_ANY, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        log.debug("no vsock listener: %s", err)
        return None
    sock.setblocking(False)
    return await asyncio.start_server(handler, sock=sock)
