"""ttrpc frame codec: a 10-byte header (length, stream id, type, flags) followed by the payload.

See containerd/ttrpc PROTOCOL.md. Lengths above :data:`MAX_MESSAGE` (4 MiB) are refused when
sending and discarded when receiving (the receiver answers RESOURCE_EXHAUSTED on that stream).
"""
from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass

from kuasar_shared.errors import ResourceExhausted

__all__ = ["MAX_MESSAGE", "HEADER", "TYPE_REQUEST", "TYPE_RESPONSE", "TYPE_DATA", "FLAG_REMOTE_CLOSED",
           "FLAG_REMOTE_OPEN", "FLAG_NO_DATA", "Frame", "OversizedFrame", "encode", "read_frame"]

MAX_MESSAGE = 4 << 20
HEADER = struct.Struct(">IIBB")

TYPE_REQUEST = 0x1
TYPE_RESPONSE = 0x2
TYPE_DATA = 0x3

FLAG_REMOTE_CLOSED = 0x1
FLAG_REMOTE_OPEN = 0x2
FLAG_NO_DATA = 0x4


@dataclass(frozen=True)
class Frame:
    stream_id: int
    type: int
    flags: int
    data: bytes


class OversizedFrame(ResourceExhausted):
    """A peer sent a frame above the limit; its bytes were discarded, the connection is still usable."""

    def __init__(self, stream_id: int, length: int) -> None:
        super().__init__(f"message length {length} exceed maximum message size of {MAX_MESSAGE}")
        self.stream_id = stream_id
        self.length = length


def encode(stream_id: int, type_: int, flags: int, data: bytes) -> bytes:
    """Render one frame; raises ResourceExhausted when ``data`` exceeds the limit."""
    if len(data) > MAX_MESSAGE:
        raise ResourceExhausted(f"message length {len(data)} exceed maximum message size of {MAX_MESSAGE}")
    return HEADER.pack(len(data), stream_id, type_, flags) + data


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one frame.

    :raise asyncio.IncompleteReadError: at EOF (clean or mid-frame).
    :raise OversizedFrame: the frame was too large; its payload has been skipped.
    """
    header = await reader.readexactly(HEADER.size)
    length, stream_id, type_, flags = HEADER.unpack(header)
    if length > MAX_MESSAGE:
        remaining = length
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(chunk)
        raise OversizedFrame(stream_id, length)
    data = await reader.readexactly(length) if length else b""
    return Frame(stream_id, type_, flags, data)
