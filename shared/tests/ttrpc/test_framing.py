import asyncio

import pytest

from kuasar_shared.errors import ResourceExhausted
from kuasar_shared.ttrpc import framing


def _reader(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader()
    r.feed_data(data)
    r.feed_eof()
    return r


def test_header_is_big_endian():
    assert framing.encode(3, framing.TYPE_REQUEST, 0, b"ab") == b"\x00\x00\x00\x02\x00\x00\x00\x03\x01\x00ab"


def test_encode_refuses_oversized():
    with pytest.raises(ResourceExhausted, match="4194304"):
        framing.encode(1, framing.TYPE_DATA, 0, b"x" * (framing.MAX_MESSAGE + 1))
    assert len(framing.encode(1, framing.TYPE_DATA, 0, b"x" * framing.MAX_MESSAGE)) == framing.MAX_MESSAGE + 10


@pytest.mark.asyncio
async def test_roundtrip_and_eof():
    data = framing.encode(5, framing.TYPE_DATA, framing.FLAG_REMOTE_CLOSED, b"hello") + framing.encode(
        7, framing.TYPE_RESPONSE, 0, b"")
    r = _reader(data)
    f1 = await framing.read_frame(r)
    assert (f1.stream_id, f1.type, f1.flags, f1.data) == (5, 3, 1, b"hello")
    f2 = await framing.read_frame(r)
    assert (f2.stream_id, f2.data) == (7, b"")
    with pytest.raises(asyncio.IncompleteReadError):
        await framing.read_frame(r)


@pytest.mark.asyncio
async def test_oversized_frame_is_skipped_and_stream_continues():
    big = framing.HEADER.pack(framing.MAX_MESSAGE + 5, 9, framing.TYPE_REQUEST, 0) + b"z" * (framing.MAX_MESSAGE + 5)
    r = _reader(big + framing.encode(11, framing.TYPE_REQUEST, 0, b"ok"))
    with pytest.raises(framing.OversizedFrame) as info:
        await framing.read_frame(r)
    assert info.value.stream_id == 9
    nxt = await framing.read_frame(r)
    assert (nxt.stream_id, nxt.data) == (11, b"ok")


@pytest.mark.asyncio
async def test_truncated_frame():
    r = _reader(framing.encode(1, 1, 0, b"abcdef")[:-2])
    with pytest.raises(asyncio.IncompleteReadError):
        await framing.read_frame(r)
