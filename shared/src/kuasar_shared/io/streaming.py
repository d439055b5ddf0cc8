"""The containerd.services.streaming.v1 Streaming service: process stdio over ttrpc streams.

With ``io_type = "streaming"`` containerd opens ``Streaming/Stream`` with a ``StreamInit{id}``
(``<container or exec id>-stdin|-stdout|-stderr``) before task Create/Exec, expects one reply
(``google.protobuf.Empty``), then exchanges ``transfer.Data`` / ``transfer.WindowUpdate`` Anys.
Either side may arrive first, so each stream id has an :class:`Endpoint` that buffers between the
process copier and whichever ttrpc stream currently serves the id (a later stream with the same id
replaces an earlier one, e.g. after an engine restart).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Dict, Optional
from urllib.parse import parse_qs, urlsplit

from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import DecodeError, Message

from kuasar_shared.api.containerd.services.streaming.v1 import streaming_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ttrpc.service import CallContext, Service, ServerStream

__all__ = ["SERVICE", "StreamingHub", "Endpoint", "stream_id_of"]

log = logging.getLogger(__name__)
SERVICE = "containerd.services.streaming.v1.Streaming"
STDIN_WINDOW = 32768


def stream_id_of(url: str) -> Optional[str]:
    """The ``streaming_id`` of a streaming stdio URL, or None for FIFO paths and empty strings."""
    if "streaming_id=" not in url:
        return None
    query = parse_qs(urlsplit(url).query)
    ids = query.get("streaming_id")
    if not ids or not ids[0]:
        raise InvalidArgument(f"streaming stdio {url!r} has an empty streaming_id")
    return ids[0]


def _type_name(msg: any_pb2.Any) -> str:
    return msg.type_url.rsplit("/", 1)[-1]


def _pack(msg: Message) -> bytes:
    out = any_pb2.Any()
    out.Pack(msg)
    return out.SerializeToString()


class Endpoint:
    """One stdio stream id: a bounded chunk queue; ``None`` marks end of data."""

    _MAX_CHUNKS = 64

    def __init__(self, stream_id: str) -> None:
        self.id = stream_id
        self.queue: asyncio.Queue[Optional[bytes]] = asyncio.Queue(self._MAX_CHUNKS)
        self.attached = asyncio.Event()
        self.finished = asyncio.Event()
        self.owner: Optional[asyncio.Task[Optional[object]]] = None

    async def put(self, data: Optional[bytes]) -> None:
        await self.queue.put(data)

    async def get(self) -> Optional[bytes]:
        return await self.queue.get()


class StreamingHub:
    """Registry of stream endpoints plus the ttrpc Streaming service that feeds them."""

    def __init__(self) -> None:
        self._endpoints: Dict[str, Endpoint] = {}

    def service(self) -> Service:
        svc = Service(SERVICE)
        svc.stream("Stream", self._serve)
        return svc

    def endpoint(self, stream_id: str) -> Endpoint:
        ep = self._endpoints.get(stream_id)
        if ep is None:
            ep = self._endpoints[stream_id] = Endpoint(stream_id)
        return ep

    def release(self, stream_id: str) -> None:
        """Forget an endpoint once its process is gone (its stream, if any, ends)."""
        ep = self._endpoints.pop(stream_id, None)
        if ep is not None:
            ep.finished.set()
            if ep.owner is not None:
                ep.owner.cancel()

    @property
    def endpoint_count(self) -> int:
        return len(self._endpoints)

    async def _serve(self, ctx: CallContext, stream: ServerStream) -> None:
        first = await stream.recv()
        if first is None:
            return None
        try:
            init_any = any_pb2.Any.FromString(first)
            if _type_name(init_any) != "containerd.services.streaming.v1.StreamInit":
                raise InvalidArgument(f"first stream message must be StreamInit, got {init_any.type_url!r}")
            init = streaming_pb2.StreamInit.FromString(init_any.value)
        except DecodeError as err:
            raise InvalidArgument(f"malformed StreamInit: {err}") from err
        if not init.id:
            raise InvalidArgument("StreamInit.id is empty")
        ep = self.endpoint(init.id)
        previous = ep.owner
        ep.owner = asyncio.current_task()
        if previous is not None and not previous.done():
            log.info("stream %s re-opened; the previous stream is replaced", init.id)
            previous.cancel()
        ep.attached.set()
        await stream.send(_pack(empty_pb2.Empty()))
        if init.id.endswith("stdin"):
            await self._pump_in(ep, stream)
        else:
            await self._pump_out(ep, stream)
        return None

    async def _pump_out(self, ep: Endpoint, stream: ServerStream) -> None:
        drain = asyncio.ensure_future(self._ignore_incoming(stream))
        try:
            while True:
                chunk = await ep.get()
                if chunk is None:
                    break
                await stream.send(_pack(transfer_pb2.Data(data=chunk)))
            await stream.close_send()
            ep.finished.set()
            self._endpoints.pop(ep.id, None)
        finally:
            drain.cancel()

    @staticmethod
    async def _ignore_incoming(stream: ServerStream) -> None:
        """Window updates from the engine need no action: output is sent as it comes."""
        while await stream.recv() is not None:
            pass

    async def _pump_in(self, ep: Endpoint, stream: ServerStream) -> None:
        window = STDIN_WINDOW
        await stream.send(_pack(transfer_pb2.WindowUpdate(update=window)))
        while True:
            raw = await stream.recv()
            if raw is None:
                await ep.put(None)
                break
            try:
                msg = any_pb2.Any.FromString(raw)
            except DecodeError:
                log.warning("stream %s: malformed message dropped", ep.id)
                continue
            if _type_name(msg) != "containerd.types.transfer.Data":
                continue
            data = transfer_pb2.Data.FromString(msg.value).data
            await ep.put(data)
            window -= len(data)
            if window < STDIN_WINDOW:
                grant = 2 * STDIN_WINDOW - window
                window += grant
                await stream.send(_pack(transfer_pb2.WindowUpdate(update=grant)))
        await stream.close_send()
        ep.finished.set()
