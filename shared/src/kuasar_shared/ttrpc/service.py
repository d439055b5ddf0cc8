"""Service method tables for the ttrpc server and the per-call context handed to handlers."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

from google.protobuf.message import Message

_log = logging.getLogger(__name__)

__all__ = ["CallContext", "Connection", "ServerStream", "Method", "Service", "UnaryHandler", "StreamHandler"]


class Connection:
    """The client connection a call arrived on: an identity to key per-client state by, and
    callbacks run once when it closes (also when the server shuts down)."""

    def __init__(self) -> None:
        self.closed = False
        self._on_close: List[Callable[[], None]] = []

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the connection closes (at once when it has closed already)."""
        if self.closed:
            callback()
        else:
            self._on_close.append(callback)

    def _closed(self) -> None:
        self.closed = True
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one broken callback must not keep the others from running
                _log.exception("ttrpc connection close callback failed")


@dataclass
class CallContext:
    """What a handler may know about its call besides the request."""

    service: str
    method: str
    metadata: Dict[str, List[str]] = field(default_factory=dict)
    #: loop time at which the caller gives up, from Request.timeout_nano; None = no deadline
    deadline: Optional[float] = None
    #: the connection of the call (None when a handler is called directly)
    connection: Optional[Connection] = None

    def get(self, key: str, default: str = "") -> str:
        values = self.metadata.get(key)
        return values[0] if values else default


class ServerStream:
    """The server side of one streaming call: receive client messages, send data frames."""

    def __init__(self, send: Callable[[bytes, int], Awaitable[None]]) -> None:
        self._send = send
        self._inbox: asyncio.Queue[Optional[bytes]] = asyncio.Queue()
        self._local_closed = False
        self._remote_closed = False

    def _deliver(self, data: Optional[bytes]) -> None:
        if self._remote_closed:
            return
        if data is None:
            self._remote_closed = True
        self._inbox.put_nowait(data)

    async def recv(self) -> Optional[bytes]:
        """Next message from the client; None once the client closed its side."""
        if self._remote_closed and self._inbox.empty():
            return None
        return await self._inbox.get()

    async def send(self, data: Union[bytes, Message]) -> None:
        if self._local_closed:
            raise RuntimeError("send on a stream whose sending side is closed")
        if isinstance(data, Message):
            data = data.SerializeToString()
        await self._send(data, 0)

    async def close_send(self) -> None:
        """Tell the client no more data follows (data frame REMOTE_CLOSED|NO_DATA)."""
        if not self._local_closed:
            self._local_closed = True
            await self._send(b"", 0x1 | 0x4)

    @property
    def remote_closed(self) -> bool:
        return self._remote_closed


UnaryHandler = Callable[[CallContext, Any], Awaitable[Message]]
StreamHandler = Callable[[CallContext, ServerStream], Awaitable[Optional[Message]]]


@dataclass(frozen=True)
class Method:
    name: str
    request_type: Optional[type]
    handler: Callable[..., Awaitable[Any]]
    streaming: bool = False


class Service:
    """A named ttrpc service, e.g. ``containerd.task.v3.Task``, with its method table."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.methods: Dict[str, Method] = {}

    def unary(self, name: str, request_type: type, handler: UnaryHandler) -> None:
        self.methods[name] = Method(name, request_type, handler)

    def stream(self, name: str, handler: StreamHandler) -> None:
        self.methods[name] = Method(name, None, handler, streaming=True)

    def __repr__(self) -> str:
        return f"<Service {self.name} methods={sorted(self.methods)}>"
