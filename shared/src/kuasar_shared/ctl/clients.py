"""The two API clients an engine needs: the Sandbox API (gRPC) and the Task API (ttrpc).

Both speak like containerd 2.x: Controller calls carry gRPC metadata ``containerd-namespace:
k8s.io`` and the proxy-plugin name in ``sandboxer``; task calls carry ttrpc metadata
``containerd-namespace-ttrpc: k8s.io`` and go to ``containerd.task.v3.Task``, falling back to
``containerd.task.v2.Task`` when v3 answers UNIMPLEMENTED. Wire errors become
:mod:`kuasar_shared.errors` types here and nowhere else.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Optional, Type, TypeVar

import grpc
from google.protobuf.message import Message

from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from kuasar_shared.errors import Unavailable, Unimplemented, from_code
from kuasar_shared.ttrpc import Client

__all__ = ["NAMESPACE", "SandboxClient", "TaskClient"]

NAMESPACE = "k8s.io"
M = TypeVar("M", bound=Message)
_TASK_V3 = "containerd.task.v3.Task"
_TASK_V2 = "containerd.task.v2.Task"


class SandboxClient:
    """A Controller client for one sandboxer socket. Close with :meth:`close`."""

    def __init__(self, socket_path: str, sandboxer: str, hint: str = "") -> None:
        self.socket_path = socket_path
        self.sandboxer = sandboxer
        self.hint = hint
        self._channel: Optional[grpc.aio.Channel] = None
        self._stub: Optional[sandbox_pb2_grpc.ControllerStub] = None

    def check(self) -> None:
        """:raise Unavailable: when the socket does not exist (with the hint how to start it)."""
        self._connect()

    def _connect(self) -> sandbox_pb2_grpc.ControllerStub:
        if self._stub is None:
            try:
                is_socket = stat.S_ISSOCK(os.stat(self.socket_path).st_mode)
            except FileNotFoundError:
                is_socket = False
            if not is_socket:
                raise Unavailable(f"sandboxer socket {self.socket_path} does not exist" + self.hint)
            self._channel = grpc.aio.insecure_channel(f"unix:{self.socket_path}")
            self._stub = sandbox_pb2_grpc.ControllerStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def call(self, method: str, request: Message, timeout: Optional[float] = 30.0) -> Any:
        """Call ``Controller/<method>``; ``sandboxer`` is filled in when the request has it.

        :raise KuasarError: the typed error for the gRPC status (Unavailable names the socket).
        """
        stub = self._connect()
        field = request.DESCRIPTOR.fields_by_name.get("sandboxer")
        if field is not None:
            setattr(request, field.name, self.sandboxer)
        try:
            metadata = (("containerd-namespace", NAMESPACE),)
            return await getattr(stub, method)(request, timeout=timeout, metadata=metadata)
        except grpc.aio.AioRpcError as err:
            code = err.code().value[0]
            message = err.details() or str(err.code())
            if err.code() == grpc.StatusCode.UNAVAILABLE:
                message = f"sandboxer at {self.socket_path} is unavailable: {message}{self.hint}"
            raise from_code(code, message) from None

    async def status(self, sandbox_id: str) -> sandbox_pb2.ControllerStatusResponse:
        reply: sandbox_pb2.ControllerStatusResponse = await self.call(
            "Status", sandbox_pb2.ControllerStatusRequest(sandbox_id=sandbox_id), 10.0)
        return reply

    async def platform(self, sandbox_id: str) -> sandbox_pb2.ControllerPlatformResponse:
        reply: sandbox_pb2.ControllerPlatformResponse = await self.call(
            "Platform", sandbox_pb2.ControllerPlatformRequest(sandbox_id=sandbox_id), 10.0)
        return reply

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


class TaskClient:
    """A Task API client for one task address (``ttrpc+unix:///...``). Close with :meth:`close`."""

    def __init__(self, address: str) -> None:
        if not address.startswith("ttrpc+"):
            raise Unimplemented(f"task address {address!r}: kuasar-ctl speaks ttrpc only")
        self.address = address
        self.version = 3
        self._client: Optional[Client] = None

    async def client(self) -> Client:
        if self._client is None or self._client.closed:
            try:
                self._client = await Client.connect(self.address)
            except OSError as err:
                raise Unavailable(f"cannot connect to task server {self.address}: {err}") from err
        return self._client

    async def call(self, method: str, request: Message, response_type: Type[M],
                   timeout: Optional[float] = 30.0) -> M:
        """One task call with the v3 message classes (v2 messages are byte-identical).

        :raise KuasarError: the typed error the task server answered.
        """
        client = await self.client()
        service = _TASK_V3 if self.version >= 3 else _TASK_V2
        try:
            return await client.call(service, method, request, response_type, timeout=timeout,
                                     metadata={"containerd-namespace-ttrpc": NAMESPACE})
        except Unimplemented:
            if self.version < 3:
                raise
            self.version = 2
            return await client.call(_TASK_V2, method, request, response_type, timeout=timeout,
                                     metadata={"containerd-namespace-ttrpc": NAMESPACE})

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
