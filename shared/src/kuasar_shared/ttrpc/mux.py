"""Many logical byte-stream connections over one byte stream (the vmm guest's virtio-serial port).

Without vsock the host reaches the guest agent through a single virtio-serial port, yet every engine
connection must stay a separate ttrpc connection. This module carries them as channels:

    frame = channel id (u32 BE) | type (u8: 1 OPEN, 2 DATA, 3 CLOSE, 4 WINDOW) | length (u32 BE) | payload

Only the host opens channels (ids > 0, never reused); the guest accepts them. DATA payloads are at most
64 KiB. Each side may send 256 KiB per channel before the receiver grants more with WINDOW (payload: a
u32 credit), granted as the application consumes what it received. CLOSE is a full close: a side sends
it once (after its buffered data); the channel is forgotten when both sides have sent it. DATA or
WINDOW for a channel a side does not know is answered with one CLOSE (and a CLOSE for one is ignored):
the two sides can disagree on which channels exist when the guest starts over on the port while the
host keeps its connection (a host relay reconnecting as the guest notices the previous one left), and
each such channel then fails on its own. A malformed frame, an unknown type or a window violation
closes the whole mux, and losing the underlying stream
fails every channel. Each channel is an (asyncio.StreamReader, writer) pair that the ttrpc Client and
``Server.serve_connection`` use unchanged.
"""
from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional, Set, Tuple

from kuasar_shared.errors import FailedPrecondition, Unavailable

__all__ = ["MuxConnection", "MuxWriter", "MuxProtocolError", "HEADER", "OPEN", "DATA", "CLOSE", "WINDOW",
           "MAX_DATA", "INITIAL_WINDOW"]

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IBI")
_CREDIT = struct.Struct(">I")
OPEN, DATA, CLOSE, WINDOW = 1, 2, 3, 4
MAX_DATA = 64 << 10
INITIAL_WINDOW = 256 << 10
_MAX_CREDIT = 0xFFFFFFFF
_READER_LIMIT = 64 << 10
_DRAIN_HIGH = 64 << 10

ChannelPair = Tuple[asyncio.StreamReader, "MuxWriter"]


class MuxProtocolError(Exception):
    """The peer broke the framing rules; the whole mux is closed."""


class _Flow(asyncio.ReadTransport):
    """The transport a channel's StreamReader believes it reads from.

    StreamReader pauses its transport when its buffer grows past twice its limit and resumes it once
    the application has read it down; the channel withholds WINDOW credit while paused.
    """

    def __init__(self, channel: "_Channel") -> None:
        super().__init__()
        self._channel = channel
        self._paused = False

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        self._channel.grant()

    def is_reading(self) -> bool:
        return not self._paused

    def is_closing(self) -> bool:
        return self._channel.sent_close or self._channel.peer_closed

    def close(self) -> None:
        self._channel.writer.close()


class _Channel:
    def __init__(self, mux: "MuxConnection", cid: int) -> None:
        self.mux = mux
        self.id = cid
        self.flow = _Flow(self)
        self.reader = asyncio.StreamReader(limit=_READER_LIMIT)
        self.reader.set_transport(self.flow)
        self.writer = MuxWriter(self)
        self.send_credit = INITIAL_WINDOW     # bytes we may still send
        self.recv_allowed = INITIAL_WINDOW    # bytes the peer may still send
        self.unacked = 0                      # bytes received and not yet granted back
        self.pending = bytearray()            # written by the application, not yet framed
        self.close_requested = False
        self.sent_close = False
        self.peer_closed = False
        self.error: Optional[Exception] = None
        self.closed = asyncio.get_running_loop().create_future()
        self.flushed = asyncio.Event()
        self.flushed.set()

    def receive(self, data: bytes) -> None:
        if len(data) > self.recv_allowed:
            raise MuxProtocolError(f"channel {self.id}: {len(data)} bytes exceed the remaining window "
                                   f"of {self.recv_allowed}")
        self.recv_allowed -= len(data)
        if self.sent_close:
            return  # we closed; the peer had not seen it yet
        self.unacked += len(data)
        self.reader.feed_data(data)
        self.grant()

    def grant(self) -> None:
        """Give credit back for received bytes unless the application is behind (reader paused)."""
        if self.flow._paused or self.sent_close or self.unacked < INITIAL_WINDOW // 4:
            return
        credit, self.unacked = self.unacked, 0
        self.recv_allowed += credit
        self.mux._send_now(self.id, WINDOW, _CREDIT.pack(credit))

    def sendable(self) -> bool:
        if self.sent_close:
            return False
        return bool(self.pending and self.send_credit) or (self.close_requested and not self.pending)

    def take_frame(self) -> bytes:
        """The next frame to send (caller checked :meth:`sendable`)."""
        if self.pending and self.send_credit:
            n = min(len(self.pending), self.send_credit, MAX_DATA)
            chunk = bytes(self.pending[:n])
            del self.pending[:n]
            self.send_credit -= n
            if len(self.pending) <= _DRAIN_HIGH:
                self.flushed.set()
            return HEADER.pack(self.id, DATA, n) + chunk
        self.sent_close = True
        self.flushed.set()
        self._maybe_forget()
        return HEADER.pack(self.id, CLOSE, 0)

    def on_peer_close(self) -> None:
        if self.peer_closed:
            raise MuxProtocolError(f"channel {self.id}: CLOSE received twice")
        self.peer_closed = True
        self.reader.feed_eof()
        self.pending.clear()
        self.flushed.set()
        if not self.sent_close:
            self.close_requested = True
            self.mux._wake(self)
        self._maybe_forget()

    def _maybe_forget(self) -> None:
        if self.sent_close and self.peer_closed:
            self.mux._forget(self)
            if not self.closed.done():
                self.closed.set_result(None)

    def fail(self, err: Exception) -> None:
        if self.error is None:
            self.error = err
        if not self.peer_closed:
            self.reader.set_exception(err)
        self.pending.clear()
        self.flushed.set()
        if not self.closed.done():
            self.closed.set_result(None)


class MuxWriter:
    """The StreamWriter-like half of a channel: write/drain/close/wait_closed/is_closing/get_extra_info."""

    def __init__(self, channel: _Channel) -> None:
        self._ch = channel

    @property
    def channel_id(self) -> int:
        return self._ch.id

    def write(self, data: bytes) -> None:
        """Queue bytes; they leave as DATA frames while the peer grants credit. Dropped once closed."""
        ch = self._ch
        if not data or ch.error is not None or ch.close_requested or ch.peer_closed:
            return
        ch.pending += data
        if len(ch.pending) > _DRAIN_HIGH:
            ch.flushed.clear()
        ch.mux._wake(ch)

    def writelines(self, data: Any) -> None:
        for chunk in data:
            self.write(chunk)

    async def drain(self) -> None:
        """Wait until at most 64 KiB are still queued.

        :raise ConnectionResetError: the channel or the whole mux is closed.
        """
        ch = self._ch
        if ch.error is None and not ch.peer_closed:
            await ch.flushed.wait()
        if ch.error is not None:
            raise ConnectionResetError(f"mux channel {ch.id}: {ch.error}")
        if ch.peer_closed:
            raise ConnectionResetError(f"mux channel {ch.id} closed by peer")

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        """Send CLOSE after the queued data; idempotent."""
        ch = self._ch
        if ch.close_requested or ch.error is not None:
            return
        ch.close_requested = True
        ch.mux._wake(ch)

    def is_closing(self) -> bool:
        ch = self._ch
        return ch.close_requested or ch.peer_closed or ch.error is not None

    async def wait_closed(self) -> None:
        """Wait until both sides closed the channel, or the mux went away."""
        await asyncio.shield(self._ch.closed)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "mux_channel":
            return self._ch.id
        return self._ch.mux._writer.get_extra_info(name, default)


class MuxConnection:
    """One end of the multiplexed stream. Create inside a running loop; it starts its reader and sender.

    ``reader``/``writer`` are the underlying stream (the mux closes ``writer`` when it ends). The host end
    (``is_host=True``) opens channels with :meth:`open`; the guest end takes them from :meth:`accept` or
    :meth:`serve`. ``max_channels`` bounds the channels open at once (further OPENs are answered with
    CLOSE on the guest, refused with Unavailable on the host).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: Any, is_host: bool,
                 max_channels: int = 1024) -> None:
        self._reader = reader
        self._writer = writer
        self.is_host = is_host
        self._max = max_channels
        self._channels: Dict[int, _Channel] = {}
        self._next_id = 1
        #: unknown channels already answered with CLOSE
        self._refused: Set[int] = set()
        self._ready: Dict[int, _Channel] = {}
        self._wakeup = asyncio.Event()
        self._accepted: asyncio.Queue[Optional[ChannelPair]] = asyncio.Queue()
        self._error: Optional[BaseException] = None
        self._done = asyncio.get_running_loop().create_future()
        self._read_task = asyncio.ensure_future(self._read_loop())
        self._send_task = asyncio.ensure_future(self._send_loop())

    def __repr__(self) -> str:
        side = "host" if self.is_host else "guest"
        return f"<MuxConnection {side} channels={len(self._channels)} closed={self.closed}>"

    @property
    def closed(self) -> bool:
        return self._error is not None

    @property
    def channel_count(self) -> int:
        return len(self._channels)

    async def open(self) -> ChannelPair:
        """Open a new channel (host only).

        :raise FailedPrecondition: called on the guest end.
        :raise Unavailable: the mux is closed or ``max_channels`` are open.
        """
        if not self.is_host:
            raise FailedPrecondition("only the host end of a mux opens channels")
        if self._error is not None:
            raise Unavailable(f"mux closed: {self._error}")
        if len(self._channels) >= self._max:
            raise Unavailable(f"mux has {len(self._channels)} open channels (limit {self._max})")
        if self._next_id > _MAX_CREDIT:
            raise Unavailable("mux channel ids exhausted")
        ch = _Channel(self, self._next_id)
        self._next_id += 1
        self._channels[ch.id] = ch
        self._send_now(ch.id, OPEN, b"")
        return ch.reader, ch.writer

    async def accept(self) -> AsyncIterator[ChannelPair]:
        """Yield each channel the host opens (guest only) until the mux closes."""
        if self.is_host:
            raise FailedPrecondition("the host end of a mux does not accept channels")
        while True:
            item = await self._accepted.get()
            if item is None:
                self._accepted.put_nowait(None)
                return
            yield item

    async def serve(self, callback: Callable[[asyncio.StreamReader, MuxWriter], Awaitable[None]]) -> None:
        """Run ``callback(reader, writer)`` for each accepted channel until the mux closes.

        Each callback runs as a task owned here: cancelled and awaited when the mux ends or ``serve`` is
        cancelled. The channel is closed when its callback returns.
        """
        tasks: Set["asyncio.Task[None]"] = set()

        async def run(reader: asyncio.StreamReader, writer: MuxWriter) -> None:
            try:
                await callback(reader, writer)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("mux channel %d handler failed", writer.channel_id)
            finally:
                writer.close()

        try:
            async for reader, writer in self.accept():
                task = asyncio.ensure_future(run(reader, writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def wait_closed(self) -> BaseException:
        """Wait until the mux ends; returns why (a ConnectionError for a lost stream, MuxProtocolError...)."""
        return await asyncio.shield(self._done)

    async def close(self) -> None:
        """Close the mux: every channel fails, the underlying writer is closed."""
        self._shutdown(ConnectionResetError("mux closed locally"))
        await asyncio.gather(self._read_task, self._send_task, return_exceptions=True)

    # -- internals -----------------------------------------------------------------------------------

    def _send_now(self, cid: int, type_: int, payload: bytes) -> None:
        """Write a control frame at once (one write call, so frames never interleave)."""
        if self._error is None:
            self._writer.write(HEADER.pack(cid, type_, len(payload)) + payload)

    def _wake(self, ch: _Channel) -> None:
        if ch.sendable():
            self._ready[ch.id] = ch
            self._wakeup.set()

    def _forget(self, ch: _Channel) -> None:
        self._channels.pop(ch.id, None)
        self._ready.pop(ch.id, None)

    async def _send_loop(self) -> None:
        """Round-robin one frame per ready channel, then wait for the underlying writer to drain."""
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._ready:
                    for cid, ch in list(self._ready.items()):
                        if not ch.sendable():
                            self._ready.pop(cid, None)
                            continue
                        self._writer.write(ch.take_frame())
                        if not ch.sendable():
                            self._ready.pop(cid, None)
                    await self._writer.drain()
        except asyncio.CancelledError:
            raise
        except (ConnectionError, OSError) as err:
            self._shutdown(err)

    async def _read_loop(self) -> None:
        reason: BaseException = ConnectionResetError("mux stream closed by peer")
        try:
            while True:
                try:
                    header = await self._reader.readexactly(HEADER.size)
                except asyncio.IncompleteReadError as err:
                    if err.partial:
                        reason = MuxProtocolError("mux stream ended inside a frame header")
                    return
                cid, type_, length = HEADER.unpack(header)
                self._check_header(cid, type_, length)
                payload = await self._reader.readexactly(length) if length else b""
                self._dispatch(cid, type_, payload)
        except asyncio.CancelledError:
            reason = ConnectionResetError("mux closed locally")
            raise
        except MuxProtocolError as err:
            log.warning("mux protocol error, closing the mux: %s", err)
            reason = err
        except asyncio.IncompleteReadError:
            reason = MuxProtocolError("mux stream ended inside a frame")
        except (ConnectionError, OSError) as err:
            reason = err
        finally:
            self._shutdown(reason)

    def _check_header(self, cid: int, type_: int, length: int) -> None:
        if type_ not in (OPEN, DATA, CLOSE, WINDOW):
            raise MuxProtocolError(f"unknown frame type {type_} on channel {cid}")
        if cid == 0:
            raise MuxProtocolError(f"frame type {type_} on reserved channel 0")
        if type_ == DATA and length > MAX_DATA:
            raise MuxProtocolError(f"DATA frame of {length} bytes exceeds {MAX_DATA} on channel {cid}")
        if type_ == WINDOW and length != _CREDIT.size:
            raise MuxProtocolError(f"WINDOW frame with a {length}-byte payload on channel {cid}")
        if type_ in (OPEN, CLOSE) and length:
            raise MuxProtocolError(f"frame type {type_} with a {length}-byte payload on channel {cid}")

    def _dispatch(self, cid: int, type_: int, payload: bytes) -> None:
        if type_ == OPEN:
            self._on_open(cid)
            return
        ch = self._channels.get(cid)
        if ch is None:
            if type_ == CLOSE:
                self._refused.discard(cid)
            elif cid not in self._refused:
                if len(self._refused) >= self._max:
                    raise MuxProtocolError(f"frames for {len(self._refused)} unknown channels")
                log.warning("mux: frame type %d for unknown channel %d; closing it", type_, cid)
                self._refused.add(cid)
                self._send_now(cid, CLOSE, b"")
            return
        if type_ == DATA:
            if ch.peer_closed:
                raise MuxProtocolError(f"DATA after CLOSE on channel {cid}")
            ch.receive(payload)
        elif type_ == CLOSE:
            ch.on_peer_close()
        else:
            (credit,) = _CREDIT.unpack(payload)
            if ch.send_credit + credit > _MAX_CREDIT:
                raise MuxProtocolError(f"WINDOW overflows the credit of channel {cid}")
            ch.send_credit += credit
            self._wake(ch)

    def _on_open(self, cid: int) -> None:
        if self.is_host:
            raise MuxProtocolError(f"the guest tried to open channel {cid}")
        if cid in self._channels:
            raise MuxProtocolError(f"OPEN for channel {cid}, which is already open")
        if cid < self._next_id:
            raise MuxProtocolError(f"OPEN reuses channel id {cid}")
        self._next_id = cid + 1
        ch = _Channel(self, cid)
        self._channels[cid] = ch
        if len(self._channels) > self._max:
            log.warning("mux: refusing channel %d, %d channels open", cid, self._max)
            ch.writer.close()
            ch.reader.feed_eof()
            return
        self._accepted.put_nowait((ch.reader, ch.writer))

    def _shutdown(self, reason: BaseException) -> None:
        if self._error is not None:
            return
        self._error = reason
        for ch in list(self._channels.values()):
            ch.fail(reason if isinstance(reason, ConnectionError) else ConnectionResetError(str(reason)))
        self._channels.clear()
        self._ready.clear()
        self._accepted.put_nowait(None)
        for task in (self._read_task, self._send_task):
            if task is not asyncio.current_task():
                task.cancel()
        try:
            self._writer.close()
        except (ConnectionError, OSError):
            pass
        if not self._done.done():
            self._done.set_result(reason)
