"""The debug console of a ``task.debug`` guest: an interactive shell on a pseudo-terminal.

Upstream's agent offers a shell on vsock port 1025 when booted with ``task.debug``. Without vsock the
host reaches the agent only through the relay and the serial mux, so the console is a ttrpc service
on the agent's one server, registered only in debug guests: ``kuasar.vmm.debug.v1.Console/Shell``, a
bidirectional stream of ``google.protobuf.Any`` (the convention of the Streaming service):

- client -> guest: ``containerd.types.transfer.Data`` (keyboard bytes), ``containerd.task.v3.ResizePtyRequest``
  (``width`` columns x ``height`` rows); closing its side types ^D (end of input);
- guest -> client: ``containerd.types.transfer.Data`` (terminal output), then one
  ``containerd.task.v3.WaitResponse`` with the shell's exit status; then the stream ends.

The call's ``term`` metadata becomes ``$TERM``. The shell leads its own session with the terminal as
its controlling tty (job control, ^C); a client that goes away hangs the session up.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import signal
import struct
import sys
import termios
from typing import Mapping, Optional

from google.protobuf import any_pb2
from google.protobuf.message import DecodeError

from kuasar_shared import process
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.fdio import readable, write_all
from kuasar_shared.ttrpc import CallContext, Service, ServerStream

__all__ = ["SERVICE", "DebugConsole", "pack", "set_window_size"]

log = logging.getLogger(__name__)

SERVICE = "kuasar.vmm.debug.v1.Console"
_CHUNK = 32768
#: how long output written just before the shell exited may take to arrive on the terminal
_DRAIN_SECONDS = 1.0
#: runs as the shell's parent image: make the terminal on fd 0 the controlling tty, then become the shell
_SET_CTTY = "import fcntl,os,sys,termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); os.execv(sys.argv[1], sys.argv[1:])"
_EOT = b"\x04"


def pack(msg: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)  # type: ignore[arg-type]
    return out


def set_window_size(fd: int, rows: int, cols: int) -> None:
    """TIOCSWINSZ on a terminal fd (the kernel signals SIGWINCH to the foreground group)."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def _write(fd: int, data: bytes) -> bool:
    """Write all of ``data`` to the non-blocking ``fd``; False when the terminal is gone (EIO)."""
    try:
        await write_all(fd, data)
    except OSError as err:
        if err.errno == errno.EIO:
            return False
        raise
    return True


class DebugConsole:
    """Serves :data:`SERVICE`; each call runs ``shell`` with ``env`` on a new pseudo-terminal."""

    def __init__(self, shell: str, env: Mapping[str, str]) -> None:
        self.shell = shell
        self.env = dict(env)

    def service(self) -> Service:
        svc = Service(SERVICE)
        svc.stream("Shell", self.run)
        return svc

    def _spawn(self, slave: int, term: str) -> process.Process:
        env = {**self.env, "TERM": term or "linux", "HOME": "/root", "SHELL": self.shell}
        return process.spawn([sys.executable, "-I", "-S", "-c", _SET_CTTY, self.shell], stdin=slave,
                             stdout=slave, stderr=slave, env=env, cwd="/", start_new_session=True)

    async def run(self, ctx: CallContext, stream: ServerStream) -> None:
        """One shell session; returns after sending its exit status (or when the client left)."""
        master, slave = os.openpty()
        proc: Optional[process.Process] = None
        try:
            os.set_blocking(master, False)
            proc = self._spawn(slave, ctx.get("term"))
            os.close(slave)
            slave = -1
            log.info("debug console: %s started (pid %d)", self.shell, proc.pid)
            output = asyncio.ensure_future(self._output(master, stream))
            keyboard = asyncio.ensure_future(self._input(master, stream))
            waiter = asyncio.ensure_future(proc.wait())
            try:
                await asyncio.wait([waiter, keyboard], return_when=asyncio.FIRST_COMPLETED)
                if keyboard.done() and not keyboard.cancelled() and keyboard.exception() is not None:
                    raise keyboard.exception()  # type: ignore[misc]
                exited = await waiter
                # the rest of the output is read until the terminal reports EIO (no writer left)
                await asyncio.wait([output], timeout=_DRAIN_SECONDS)
            finally:
                for task in (output, keyboard, waiter):
                    task.cancel()
                await asyncio.gather(output, keyboard, waiter, return_exceptions=True)
            log.info("debug console: %s exited with %d", self.shell, exited.status)
            done = shim_pb2.WaitResponse(exit_status=exited.status)
            done.exited_at.FromDatetime(exited.exited_at)
            await stream.send(pack(done))
        finally:
            if slave >= 0:
                os.close(slave)
            if proc is not None and proc.returncode is None:
                try:
                    os.killpg(proc.pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass
            os.close(master)

    @staticmethod
    async def _output(master: int, stream: ServerStream) -> None:
        while True:
            await readable(master)
            try:
                data = os.read(master, _CHUNK)
            except BlockingIOError:
                continue
            except OSError as err:
                if err.errno == errno.EIO:
                    return
                raise
            if not data:
                return
            await stream.send(pack(transfer_pb2.Data(data=data)))

    @staticmethod
    async def _input(master: int, stream: ServerStream) -> None:
        while True:
            raw = await stream.recv()
            if raw is None:
                await _write(master, _EOT)
                return
            try:
                msg = any_pb2.Any.FromString(raw)
                if msg.TypeName() == transfer_pb2.Data.DESCRIPTOR.full_name:
                    data = transfer_pb2.Data()
                    msg.Unpack(data)
                    if not await _write(master, data.data):
                        return
                    continue
                if msg.TypeName() == shim_pb2.ResizePtyRequest.DESCRIPTOR.full_name:
                    size = shim_pb2.ResizePtyRequest()
                    msg.Unpack(size)
                    set_window_size(master, size.height, size.width)
                    continue
            except DecodeError as err:
                raise InvalidArgument("debug console: malformed message: %s" % err) from err
            log.debug("debug console: ignoring a %s message", msg.type_url)
