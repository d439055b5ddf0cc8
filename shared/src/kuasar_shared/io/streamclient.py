"""The client side of containerd's Streaming service: what an engine (kuasar-ctl) or a relay runs on a stream.

:func:`open_stream` does containerd's handshake (``StreamInit{id}``, the server's one reply, then the
receive window we announce); :func:`receive` is the loop over what the server sends: each
``transfer.Data`` payload goes to a sink, optionally granting the window back as it is consumed, and any
other message to a handler (a terminal's exit status, for instance).
"""
from __future__ import annotations

from typing import Awaitable, Callable, Optional

from google.protobuf import any_pb2
from google.protobuf.message import Message

from kuasar_shared.api.containerd.services.streaming.v1 import streaming_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.io.streaming import SERVICE
from kuasar_shared.ttrpc import Client, ClientStream

__all__ = ["WINDOW", "pack", "data_message", "open_stream", "receive"]

#: the receive window containerd announces right after the stream handshake
WINDOW = 65536


def pack(message: Message) -> bytes:
    """``message`` wrapped in an Any, serialized: one frame of a Streaming stream."""
    out = any_pb2.Any()
    out.Pack(message)
    return out.SerializeToString()


def data_message(data: bytes) -> bytes:
    """One ``transfer.Data`` frame, e.g. for a stdin stream."""
    return pack(transfer_pb2.Data(data=data))


async def open_stream(client: Client, stream_id: str, window: Optional[int] = WINDOW) -> ClientStream:
    """Open one Streaming/Stream the way containerd does: StreamInit{id}, wait for the reply, announce our
    receive window (``window=None`` for a stream we do not grant window on, e.g. one we only send on).
    The caller closes the stream (or the client).

    :raise InvalidArgument: the server ended the stream during the handshake.
    """
    stream = await client.stream(SERVICE, "Stream")
    await stream.send(pack(streaming_pb2.StreamInit(id=stream_id)))
    if await stream.recv() is None:
        raise InvalidArgument(f"streaming server closed stream {stream_id} during the handshake")
    if window is not None:
        await stream.send(pack(transfer_pb2.WindowUpdate(update=window)))
    return stream


async def receive(stream: ClientStream, sink: Callable[[bytes], Awaitable[None]],
                  other: Optional[Callable[[any_pb2.Any], None]] = None, grant_window: bool = False) -> None:
    """Take what the server sends until it ends the stream: each non-empty ``transfer.Data`` payload is
    awaited in ``sink`` (then, with ``grant_window``, as much window is granted back); any other message
    goes to ``other``, or is dropped without it."""
    while True:
        frame = await stream.recv()
        if frame is None:
            return
        msg = any_pb2.Any.FromString(frame)
        if msg.TypeName() == transfer_pb2.Data.DESCRIPTOR.full_name:
            data = transfer_pb2.Data.FromString(msg.value).data
            if data:
                await sink(data)
                if grant_window:
                    await stream.send(pack(transfer_pb2.WindowUpdate(update=len(data))))
        elif other is not None:
            other(msg)
