"""Terminals for container and exec processes: the runtime's console socket and the pty copiers.

For a process with ``terminal = true`` the OCI runtime creates the pty inside the container and
sends its master over the unix socket named by ``--console-socket`` (SCM_RIGHTS). The engine's
stdio stays what it always is (a stdin and a stdout FIFO or streaming id, no stderr: a terminal
has one output), so the task server copies between them and the master, as containerd's runc
shim does: engine stdin -> master, master -> engine stdout until the pty's last slave closes
(EIO) or the copier is cancelled. ResizePty is ``TIOCSWINSZ`` on the master.
"""
from __future__ import annotations

import array
import asyncio
import errno
import fcntl
import os
import shutil
import socket
import struct
import tempfile
import termios
from typing import Awaitable, Callable, Optional

from kuasar_shared.errors import Internal, InvalidArgument
from kuasar_shared.fdio import readable, write_all

__all__ = ["ConsoleSocket", "copy_from_master", "copy_to_master", "resize"]

_CHUNK = 32768


class ConsoleSocket:
    """A listening unix socket for ``--console-socket`` in a fresh private directory (short enough
    for a socket path wherever the task server's state lives).

    Resource handling: :meth:`close` removes the socket and its directory; the master returned by
    :meth:`receive` belongs to the caller.
    """

    #: seconds to wait for the runtime's connection once it reported success
    receive_timeout = 10.0

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="kuasar-console-")
        self.path = os.path.join(self._dir, "console.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.bind(self.path)
            self._sock.listen(1)
            self._sock.setblocking(False)
        except OSError:
            self.close()
            raise

    async def receive(self) -> int:
        """The pty master the runtime sent (call after its create/exec succeeded).

        :raise Internal: no connection or no file descriptor arrived.
        """
        loop = asyncio.get_running_loop()
        try:
            conn, _ = await asyncio.wait_for(loop.sock_accept(self._sock), self.receive_timeout)
        except asyncio.TimeoutError:
            raise Internal("the runtime never connected to the console socket") from None
        with conn:
            conn.settimeout(self.receive_timeout)
            fds = array.array("i")
            try:
                _, ancdata, _, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
            except OSError as err:
                raise Internal(f"cannot receive the terminal from the runtime: {err}") from err
            for level, kind, data in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(data[:len(data) - (len(data) % fds.itemsize)])
        if not fds:
            raise Internal("the runtime sent no terminal over the console socket")
        for extra in fds[1:]:
            os.close(extra)
        master = fds[0]
        os.set_inheritable(master, False)
        os.set_blocking(master, False)
        return master

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)


async def copy_from_master(master: int, sink: Callable[[Optional[bytes]], Awaitable[None]]) -> None:
    """Copy the terminal's output to ``sink`` until its last slave closes; ``sink(None)`` ends it."""
    try:
        while True:
            try:
                chunk = os.read(master, _CHUNK)
            except BlockingIOError:
                await readable(master)
                continue
            except OSError as err:
                if err.errno == errno.EIO:  # every slave is closed: the processes are gone
                    break
                raise
            if not chunk:
                break
            await sink(chunk)
    finally:
        await sink(None)


async def copy_to_master(master: int, source: Callable[[], Awaitable[Optional[bytes]]]) -> None:
    """Copy the engine's stdin to the terminal until it ends (the terminal stays open)."""
    while True:
        chunk = await source()
        if not chunk:
            return
        try:
            await write_all(master, chunk)
        except OSError as err:
            if err.errno == errno.EIO:
                return
            raise


def resize(master: int, width: int, height: int) -> None:
    """Set the terminal's size in characters.

    :raise InvalidArgument: a size outside 0..65535.
    """
    if not (0 <= width <= 0xFFFF and 0 <= height <= 0xFFFF):
        raise InvalidArgument(f"terminal size {width}x{height} is out of range")
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
