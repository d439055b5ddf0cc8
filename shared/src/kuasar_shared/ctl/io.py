"""Container stdio for kuasar-ctl: FIFOs, streaming clients and the CRI log format.

Two ways to hand stdio to a task, both as containerd does them:

* ``fifo``: the engine creates ``<ctr dir>/io/<id>-stdout`` / ``-stderr`` FIFOs, opens their read
  side and passes the paths in task Create/Exec.
* ``streaming``: the engine dials ``containerd.services.streaming.v1.Streaming/Stream`` on the
  task address with stream id ``<id>-stdout`` (:func:`kuasar_shared.io.streamclient.open_stream`),
  *before* the task call, and passes ``<task address>?streaming_id=<id>-stdout``.

Container output goes to the CRI log file (``<RFC3339Nano> stdout F <line>``) through a detached
log writer process (:mod:`kuasar_shared.ctl.logwriter`) because kuasar-ctl itself exits after each
command; exec output is copied in the foreground.
"""
from __future__ import annotations

import asyncio
import datetime
import os
import stat
from dataclasses import dataclass
from typing import Callable, Optional

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.io.streamclient import receive
from kuasar_shared.ttrpc import ClientStream

__all__ = ["MAX_LOG_LINE", "StdioPaths", "make_fifos", "streaming_url", "open_fifo_reader", "copy_fifo",
           "copy_stream", "CriLogWriter", "format_timestamp", "parse_cri_line"]

#: containerd's max_container_log_line_size default
MAX_LOG_LINE = 16 * 1024
Sink = Callable[[bytes], None]


@dataclass(frozen=True)
class StdioPaths:
    """Stdio strings for task Create/Exec ("" = not connected)."""

    stdin: str = ""
    stdout: str = ""
    stderr: str = ""


def make_fifos(directory: str, base_id: str, stdin: bool = False) -> StdioPaths:
    """Create ``<directory>/<base_id>-{stdin,stdout,stderr}`` FIFOs (0600); existing FIFOs are reused.

    :raise InvalidArgument: when a path exists and is not a FIFO.
    """
    os.makedirs(directory, mode=0o700, exist_ok=True)
    paths = {}
    for name in (("stdin",) if stdin else ()) + ("stdout", "stderr"):
        path = os.path.join(directory, f"{base_id}-{name}")
        try:
            os.mkfifo(path, 0o600)
        except FileExistsError:
            if not stat.S_ISFIFO(os.stat(path).st_mode):
                raise InvalidArgument(f"{path} exists and is not a FIFO") from None
        paths[name] = path
    return StdioPaths(**paths)


def streaming_url(address: str, stream_id: str) -> str:
    """``ttrpc+unix:///x.sock?streaming_id=<id>`` (containerd internal/cri/io helpers)."""
    return f"{address}?streaming_id={stream_id}"


def open_fifo_reader(path: str) -> int:
    """Open the read side of a FIFO without waiting for a writer. The caller closes the fd."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


async def copy_fifo(fd: int, sink: Sink) -> None:
    """Copy from a FIFO read fd into ``sink`` until every writer has closed it; closes ``fd``.

    Readiness comes from epoll, which (unlike read()) reports no hang-up before a first writer
    appeared, so opening the read side early is safe.
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", 0))
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            sink(data)
    finally:
        transport.close()


async def copy_stream(stream: ClientStream, sink: Sink) -> None:
    """Copy ``transfer.Data`` payloads from a stream into ``sink`` until the server ends it, granting
    window back as data is consumed (as containerd does)."""
    async def write(data: bytes) -> None:
        sink(data)
    await receive(stream, write, grant_window=True)


def format_timestamp(now: Optional[datetime.datetime] = None) -> str:
    """Go's time.RFC3339Nano of the local time (trailing zeros of the fraction trimmed)."""
    now = now or datetime.datetime.now().astimezone()
    text = now.strftime("%Y-%m-%dT%H:%M:%S")
    nanos = now.microsecond * 1000
    if nanos:
        text += ("." + "%09d" % nanos).rstrip("0")
    offset = now.strftime("%z")
    if offset in ("+0000", ""):
        return text + "Z"
    return text + offset[:3] + ":" + offset[3:]


class CriLogWriter:
    """Split a byte stream into CRI log lines: full lines tagged ``F``; lines longer than
    :data:`MAX_LOG_LINE` and a last line without newline tagged ``P`` (containerd redirectLogs)."""

    def __init__(self, write: Callable[[bytes], None], stream: str) -> None:
        self._write = write
        self._stream = stream.encode()
        self._buf = b""

    def _emit(self, tag: bytes, line: bytes) -> None:
        self._write(format_timestamp().encode() + b" " + self._stream + b" " + tag + b" " + line + b"\n")

    def feed(self, data: bytes) -> None:
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0 or nl > MAX_LOG_LINE:
                while len(self._buf) > MAX_LOG_LINE:
                    self._emit(b"P", self._buf[:MAX_LOG_LINE])
                    self._buf = self._buf[MAX_LOG_LINE:]
                if nl < 0 or b"\n" not in self._buf:
                    return
                continue
            self._emit(b"F", self._buf[:nl])
            self._buf = self._buf[nl + 1:]

    def close(self) -> None:
        if self._buf:
            self._emit(b"P", self._buf)
            self._buf = b""


def parse_cri_line(line: bytes) -> tuple[str, str, bool, bytes]:
    """``(timestamp, stream, partial, content)`` of one CRI log line (without its newline).

    :raise InvalidArgument: for a line not in CRI format.
    """
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        raise InvalidArgument(f"not a CRI log line: {line[:80]!r}")
    return parts[0].decode(), parts[1].decode(), parts[2] == b"P", parts[3] if len(parts) > 3 else b""
