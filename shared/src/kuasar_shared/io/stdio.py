"""Stdio for a container or exec process: the fds to hand to the child, and the copiers behind them.

- FIFO stdout/stderr (``io_type = "fifo"``, iSulad): the FIFO itself is opened read-write and given to
  the child, so output keeps flowing with no copier in the task server and survives its restart.
- FIFO stdin: a pipe plus a copier, so that CloseIO can deliver EOF to the process.
- Streaming URLs: a pipe plus a copier to/from the :class:`StreamingHub` endpoint of that id.
- Empty: /dev/null.
- Terminal (``terminal = true``): the runtime makes a pty and sends its master to
  :attr:`ProcessIO.console_socket`; :meth:`ProcessIO.attach_console` then copies engine stdin to it
  and its output to the engine's stdout (see :mod:`kuasar_shared.io.console`). Unlike FIFO output,
  a terminal does not survive a restart of the task server (the master dies with it).
"""
from __future__ import annotations

import asyncio
import logging
import os
import stat
from typing import Any, Awaitable, Callable, Coroutine, List, Optional, Tuple

from kuasar_shared.errors import FailedPrecondition, InvalidArgument
from kuasar_shared.fdio import write_all
from kuasar_shared.io.console import ConsoleSocket, copy_from_master, copy_to_master, resize
from kuasar_shared.io.streaming import Endpoint, StreamingHub, stream_id_of
from kuasar_shared.values import Stdio

__all__ = ["ProcessIO", "open_process_io"]

log = logging.getLogger(__name__)
#: the next chunk of a process's stdin; empty or None at its end
_ChunkSource = Callable[[], Awaitable[Optional[bytes]]]
_CHUNK = 32768


def _open_fifo(path: str, flags: int) -> int:
    if not os.path.isabs(path):
        raise InvalidArgument(f"stdio path {path!r} must be absolute")
    try:
        fd = os.open(path, flags | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        raise InvalidArgument(f"cannot open stdio FIFO {path}: {err.strerror}") from err
    if not stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"stdio path {path} is not a FIFO")
    os.set_blocking(fd, True)
    return fd


class ProcessIO:
    """Owns the child-side fds until the child has them, then the copier tasks until the end.

    Resource handling: call :meth:`child_started` right after the child was spawned (closes our
    copies of its fds), :meth:`wait` to let output drain after it exits, :meth:`close` always.
    """

    def __init__(self) -> None:
        self.stdin: Optional[int] = None
        self.stdout: Optional[int] = None
        self.stderr: Optional[int] = None
        self._child_fds: List[int] = []
        self._tasks: List[asyncio.Task[None]] = []
        self._endpoints: List[str] = []
        self._hub: Optional[StreamingHub] = None
        #: terminal processes: where the runtime sends the pty master, then the master itself
        self._console: Optional[ConsoleSocket] = None
        self._master: Optional[int] = None
        self._sink: Optional[Callable[[Optional[bytes]], Awaitable[None]]] = None
        self._source: Optional[Callable[[], Awaitable[Optional[bytes]]]] = None
        #: what :meth:`close` releases besides the copiers (a terminal's FIFOs)
        self._closers: List[Callable[[], None]] = []
        #: prefix of the copier task names
        self.name = ""

    @property
    def console_socket(self) -> Optional[str]:
        """The ``--console-socket`` path to give the runtime (None: not a terminal)."""
        return self._console.path if self._console is not None else None

    async def attach_console(self) -> None:
        """Receive the pty master from the runtime and start copying (after create/exec succeeded).

        :raise Internal: the runtime sent no terminal.
        """
        if self._console is None or self._sink is None:
            return
        self._master = await self._console.receive()
        self._console.close()
        self._console = None
        self._spawn(f"{self.name}-console-copier", copy_from_master(self._master, self._sink))
        if self._source is not None:
            self._spawn(f"{self.name}-stdin-copier", copy_to_master(self._master, self._source))

    def resize(self, width: int, height: int) -> None:
        """ResizePty. :raise FailedPrecondition: the process has no terminal."""
        if self._master is None:
            raise FailedPrecondition("the process has no terminal")
        resize(self._master, width, height)

    def child_started(self) -> None:
        for fd in self._child_fds:
            os.close(fd)
        self._child_fds.clear()

    def close_stdin(self) -> None:
        """Deliver EOF to the process's stdin (CloseIO)."""
        for task in self._tasks:
            if task.get_name().endswith("-stdin-copier"):
                task.cancel()

    async def wait(self, timeout: float = 5.0) -> None:
        """Wait until output copiers drained (after the process exited)."""
        outs = [t for t in self._tasks if not t.get_name().endswith("-stdin-copier")]
        if outs:
            await asyncio.wait(outs, timeout=timeout)

    async def close(self) -> None:
        self.child_started()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._console is not None:
            self._console.close()
            self._console = None
        if self._master is not None:
            os.close(self._master)
            self._master = None
        for closer in self._closers:
            closer()
        self._closers.clear()
        if self._hub is not None:
            for sid in self._endpoints:
                self._hub.release(sid)

    def _child(self, fd: int) -> int:
        self._child_fds.append(fd)
        return fd

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)


async def _copy_pipe_to_endpoint(fd: int, ep: Endpoint) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    try:
        while True:
            chunk = await reader.read(_CHUNK)
            if not chunk:
                break
            await ep.put(chunk)
        await ep.put(None)
    finally:
        transport.close()


async def _copy_source_to_pipe(fd: int, source: _ChunkSource,
                               source_transport: Optional[asyncio.BaseTransport] = None) -> None:
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(fd, "wb", 0))
    try:
        while True:
            chunk = await source()
            if not chunk:
                break
            transport.write(chunk)
            while transport.get_write_buffer_size() > 4 * _CHUNK:
                await asyncio.sleep(0.01)
    finally:
        transport.close()
        if source_transport is not None:
            source_transport.close()


async def open_process_io(stdio: Stdio, hub: Optional[StreamingHub], name: str = "") -> ProcessIO:
    """Prepare the child's stdio for the strings an engine sent.

    :raise InvalidArgument: a FIFO path is relative, missing or not a FIFO; a streaming URL is
        given but this server has no Streaming service.
    """
    pio = ProcessIO()
    pio._hub = hub
    pio.name = name
    if stdio.terminal:
        try:
            await _open_terminal(pio, stdio, hub)
        except BaseException:
            await pio.close()
            raise
        return pio
    try:
        for which in ("stdout", "stderr"):
            url = getattr(stdio, which)
            if not url:
                continue
            sid = stream_id_of(url)
            if sid is None:
                setattr(pio, which, pio._child(_open_fifo(url, os.O_RDWR)))
                continue
            if hub is None:
                raise InvalidArgument(f"{which} {url!r} is a streaming URL but streaming IO is not served here")
            r, w = os.pipe2(os.O_CLOEXEC)
            setattr(pio, which, pio._child(w))
            pio._endpoints.append(sid)
            pio._spawn(f"{name}-{which}-copier", _copy_pipe_to_endpoint(r, hub.endpoint(sid)))
        if stdio.stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            pio.stdin = pio._child(r)
            sid = stream_id_of(stdio.stdin)
            fifo_transport = None
            if sid is None:
                try:
                    source, fifo_transport = await _fifo_source(_open_fifo(stdio.stdin, os.O_RDONLY))
                except BaseException:
                    os.close(w)
                    raise
            elif hub is None:
                os.close(w)
                raise InvalidArgument(f"stdin {stdio.stdin!r} is a streaming URL but streaming IO is not served here")
            else:
                pio._endpoints.append(sid)
                source = hub.endpoint(sid).get
            pio._spawn(f"{name}-stdin-copier", _copy_source_to_pipe(w, source, fifo_transport))
    except BaseException:
        await pio.close()
        raise
    return pio


async def _open_terminal(pio: ProcessIO, stdio: Stdio, hub: Optional[StreamingHub]) -> None:
    """Prepare a terminal process: the console socket, the engine's stdout as the sink of the pty
    output and its stdin as the source of the pty input (stderr is unused: a pty has one output)."""
    if stdio.stdout:
        sid = stream_id_of(stdio.stdout)
        if sid is None:
            sink = _FdSink(_open_fifo(stdio.stdout, os.O_RDWR))
            os.set_blocking(sink.fd, False)
            pio._sink = sink
            pio._closers.append(sink.close)
        elif hub is None:
            raise InvalidArgument(f"stdout {stdio.stdout!r} is a streaming URL but streaming IO is not served here")
        else:
            pio._endpoints.append(sid)
            pio._sink = hub.endpoint(sid).put
    else:
        pio._sink = _discard
    if stdio.stdin:
        sid = stream_id_of(stdio.stdin)
        if sid is None:
            source, transport = await _fifo_source(_open_fifo(stdio.stdin, os.O_RDONLY))
            pio._source = source
            pio._closers.append(transport.close)
        elif hub is None:
            raise InvalidArgument(f"stdin {stdio.stdin!r} is a streaming URL but streaming IO is not served here")
        else:
            pio._endpoints.append(sid)
            pio._source = hub.endpoint(sid).get
    pio._console = ConsoleSocket()


class _FdSink:
    """Writes chunks to a FIFO; None (the end) or :meth:`close` closes it, which is EOF for the engine."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def __call__(self, chunk: Optional[bytes]) -> None:
        if chunk is None:
            self.close()
        elif self.fd >= 0:
            await write_all(self.fd, chunk)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def _discard(chunk: Optional[bytes]) -> None:
    """The sink of a terminal whose output nobody reads."""


async def _fifo_source(fd: int) -> Tuple[_ChunkSource, asyncio.ReadTransport]:
    """An async chunk source over a FIFO (the engine's stdin)."""
    reader = asyncio.StreamReader()
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    return (lambda: reader.read(_CHUNK)), transport
