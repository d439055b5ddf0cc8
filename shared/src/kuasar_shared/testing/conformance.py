"""SandboxerConformance: the Sandbox API scenarios every sandbox type must pass, as a pytest base class.

Each sandbox type's tests subclass it and provide a ``sandboxer`` fixture::

    class TestRuncSandboxer(SandboxerConformance):
        @pytest.fixture
        def sandboxer(self, tmp_path):
            return RuncSandboxer(...)

The suite runs every scenario through a REAL grpc.aio server on a unix socket (what containerd
talks to), so it covers the controller's validation and error mapping together with the
sandboxer's state machine. Resource handling: the suite calls ``recover()`` before serving and
``close()`` at the end, and shuts down every pod it created, also when a scenario fails.
Override :meth:`create_request` when a sandbox type needs more in a pod (a netns, a config).
The async scenarios rely on pytest-asyncio's auto mode (the project's pytest configuration). pytest is
imported only by the subclasses' definition and the scenarios that use it, so this module, shipped in
kuasar_shared, imports without it.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from typing import Any, AsyncIterator, Awaitable

import grpc
from google.protobuf import any_pb2

from kuasar_shared.api.cgroups.v1 import metrics_pb2 as cgroups_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from kuasar_shared.api.containerd.types import sandbox_pb2 as types_sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as cri_pb2
from kuasar_shared.sandbox.api import Sandboxer
from kuasar_shared.sandbox.controller import METRICS_TYPE_URL, NOT_READY, READY, host_platform
from kuasar_shared.sandbox.server import serve_sandbox_api
from kuasar_shared.sandbox.tasks_extension import update_request

__all__ = ["SandboxerConformance", "SandboxApiClient", "CONTROLLER", "HOSTILE_IDS", "expect_code"]

CONTROLLER = "containerd.services.sandbox.v1.Controller"
#: Ids that must never reach a sandboxer: a path separator, a parent reference, NUL, 200 chars, empty.
HOSTILE_IDS = ("a/b", "..", "../etc", "a\x00b", "x" * 200, "")
_METADATA = (("containerd-namespace", "k8s.io"),)
_TIMEOUT = 30.0


async def expect_code(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Await a gRPC call that must fail with ``code``; return the error for further checks."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        assert err.code() == code, "expected %s, got %s: %s" % (code, err.code(), err.details())
        return err
    raise AssertionError("expected %s, the call succeeded" % code)


class SandboxApiClient:
    """A containerd-like client of one Sandbox API socket; remembers the pods it created.

    Resource handling: owns its channel; :meth:`close` closes it.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = sandbox_pb2_grpc.ControllerStub(self.channel)  # type: ignore[no-untyped-call,unused-ignore]
        self.created: list[str] = []

    def call(self, method: str, request: Any, timeout: float = _TIMEOUT) -> Any:
        """Start one Controller call (a grpc.aio call object: await it or cancel it)."""
        return getattr(self.stub, method)(request, metadata=_METADATA, timeout=timeout)

    def raw(self, method: str, payload: bytes) -> Any:
        """Send ``payload`` bytes unchanged as the request of ``method``; returns response bytes."""
        rpc = self.channel.unary_unary("/%s/%s" % (CONTROLLER, method), request_serializer=None,
                                       response_deserializer=None)
        return rpc(payload, metadata=_METADATA, timeout=_TIMEOUT)

    async def create(self, request: sandbox_pb2.ControllerCreateRequest) -> Any:
        self.created.append(request.sandbox_id)
        return await self.call("Create", request)

    async def start(self, sandbox_id: str) -> Any:
        return await self.call("Start", sandbox_pb2.ControllerStartRequest(sandbox_id=sandbox_id))

    async def status(self, sandbox_id: str) -> Any:
        return await self.call("Status", sandbox_pb2.ControllerStatusRequest(sandbox_id=sandbox_id))

    def wait(self, sandbox_id: str, timeout: float = _TIMEOUT) -> Any:
        return self.call("Wait", sandbox_pb2.ControllerWaitRequest(sandbox_id=sandbox_id), timeout)

    async def stop(self, sandbox_id: str) -> Any:
        return await self.call("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id=sandbox_id))

    async def shutdown(self, sandbox_id: str) -> Any:
        return await self.call("Shutdown", sandbox_pb2.ControllerShutdownRequest(sandbox_id=sandbox_id))

    async def cleanup(self) -> None:
        """Shut down every pod this client created (unknown ones answer OK)."""
        for sandbox_id in self.created:
            try:
                await self.shutdown(sandbox_id)
            except grpc.aio.AioRpcError:
                pass

    async def close(self) -> None:
        await self.channel.close(None)


class SandboxerConformance:
    """Sandbox API scenarios; subclasses provide the ``sandboxer`` fixture (see module docstring)."""

    #: ``sandboxer`` field sent in requests (containerd sends its proxy_plugins key).
    sandboxer_name = "conformance"
    #: the fixture serving the suite's sandboxer (:meth:`_serve_api`), set on each subclass
    api: Any

    def new_id(self) -> str:
        return "conf-" + uuid.uuid4().hex[:16]

    def create_request(self, sandbox_id: str) -> sandbox_pb2.ControllerCreateRequest:
        """The Create request of a plain pod; override to add what a sandbox type needs."""
        config = cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(name=sandbox_id, namespace="conformance", uid=sandbox_id),
            hostname=sandbox_id[:63])
        options = any_pb2.Any(type_url="runtime.v1.PodSandboxConfig", value=config.SerializeToString())
        return sandbox_pb2.ControllerCreateRequest(
            sandbox_id=sandbox_id, sandboxer=self.sandboxer_name, options=options,
            sandbox=types_sandbox_pb2.Sandbox(sandbox_id=sandbox_id, sandboxer=self.sandboxer_name))

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Each suite gets the ``api`` fixture; pytest-asyncio is imported here, when a test module
        subclasses the suite, not when this module is imported."""
        super().__init_subclass__(**kwargs)
        import pytest_asyncio

        cls.api = pytest_asyncio.fixture(SandboxerConformance._serve_api)

    async def _serve_api(self, sandboxer: Sandboxer) -> AsyncIterator[SandboxApiClient]:
        """The ``api`` fixture: ``sandboxer`` behind a real Sandbox API server, and a client of it."""
        await sandboxer.recover()
        sock_dir = tempfile.mkdtemp(prefix="kuasar-conf-")
        server = await serve_sandbox_api(os.path.join(sock_dir, "sandboxer.sock"), sandboxer)
        client = SandboxApiClient(server.address)
        try:
            yield client
        finally:
            await client.cleanup()
            await client.close()
            await server.stop(None)
            await sandboxer.close()
            shutil.rmtree(sock_dir, ignore_errors=True)

    async def _running(self, api: SandboxApiClient) -> tuple[str, Any]:
        sandbox_id = self.new_id()
        await api.create(self.create_request(sandbox_id))
        return sandbox_id, await api.start(sandbox_id)

    @staticmethod
    def _check_address(address: str, version: int) -> None:
        assert address.startswith("ttrpc+unix:///"), "task address %r is not ttrpc+unix:///abs" % address
        assert version == 3

    # -- lifecycle --------------------------------------------------------------------------------

    async def test_lifecycle(self, api: SandboxApiClient) -> None:
        sandbox_id = self.new_id()
        created = await api.create(self.create_request(sandbox_id))
        assert created.sandbox_id == sandbox_id
        started = await api.start(sandbox_id)
        assert started.sandbox_id == sandbox_id and started.pid > 0
        assert started.HasField("created_at")
        self._check_address(started.address, started.version)
        status = await api.status(sandbox_id)
        assert status.state == READY and status.pid == started.pid
        self._check_address(status.address, status.version)
        platform = await api.call("Platform", sandbox_pb2.ControllerPlatformRequest(sandbox_id=sandbox_id))
        assert platform.platform == host_platform()
        wait = api.wait(sandbox_id)
        await asyncio.sleep(0.1)
        assert not wait.done(), "Wait returned while the pod is running"
        await api.stop(sandbox_id)
        waited = await asyncio.wait_for(wait, 10)
        assert waited.HasField("exited_at")
        assert (await api.status(sandbox_id)).state == NOT_READY
        await api.stop(sandbox_id)
        await api.shutdown(sandbox_id)
        await expect_code(api.status(sandbox_id), grpc.StatusCode.NOT_FOUND)
        await api.shutdown(sandbox_id)

    async def test_stop_releases_every_wait(self, api: SandboxApiClient) -> None:
        sandbox_id, _ = await self._running(api)
        waits = [api.wait(sandbox_id) for _ in range(3)]
        await asyncio.sleep(0.1)
        await api.stop(sandbox_id)
        results = await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert len({(r.exit_status, r.exited_at.seconds, r.exited_at.nanos) for r in results}) == 1
        finished = await asyncio.wait_for(api.wait(sandbox_id), 10)
        assert finished == results[0]

    async def test_stop_and_shutdown_before_start(self, api: SandboxApiClient) -> None:
        sandbox_id = self.new_id()
        await api.create(self.create_request(sandbox_id))
        await api.stop(sandbox_id)
        await api.shutdown(sandbox_id)
        await expect_code(api.status(sandbox_id), grpc.StatusCode.NOT_FOUND)

    async def test_concurrent_pods(self, api: SandboxApiClient) -> None:
        ids = [self.new_id() for _ in range(5)]
        await asyncio.gather(*(api.create(self.create_request(i)) for i in ids))
        started = await asyncio.gather(*(api.start(i) for i in ids))
        assert all(s.pid > 0 for s in started)
        assert all(s.state == READY for s in await asyncio.gather(*(api.status(i) for i in ids)))
        await asyncio.gather(*(api.shutdown(i) for i in ids))
        for sandbox_id in ids:
            await expect_code(api.status(sandbox_id), grpc.StatusCode.NOT_FOUND)

    async def test_metrics(self, api: SandboxApiClient) -> None:
        sandbox_id, _ = await self._running(api)
        reply = await api.call("Metrics", sandbox_pb2.ControllerMetricsRequest(sandbox_id=sandbox_id))
        if reply.HasField("metrics"):
            assert reply.metrics.id == sandbox_id
            assert reply.metrics.data.type_url == METRICS_TYPE_URL
            cgroups_pb2.Metrics.FromString(reply.metrics.data.value)

    # -- wrong ids and states ---------------------------------------------------------------------

    async def test_unknown_id(self, api: SandboxApiClient) -> None:
        unknown = self.new_id()
        not_found = grpc.StatusCode.NOT_FOUND
        await expect_code(api.start(unknown), not_found)
        await expect_code(api.status(unknown), not_found)
        await expect_code(api.wait(unknown), not_found)
        await expect_code(api.call("Platform", sandbox_pb2.ControllerPlatformRequest(sandbox_id=unknown)),
                          not_found)
        await expect_code(api.call("Metrics", sandbox_pb2.ControllerMetricsRequest(sandbox_id=unknown)),
                          not_found)
        await expect_code(api.call("Update", update_request(unknown, b'{"tasks": []}')), not_found)
        await api.stop(unknown)
        await api.shutdown(unknown)

    async def test_duplicate_create(self, api: SandboxApiClient) -> None:
        sandbox_id = self.new_id()
        await api.create(self.create_request(sandbox_id))
        await expect_code(api.create(self.create_request(sandbox_id)), grpc.StatusCode.ALREADY_EXISTS)
        await api.start(sandbox_id)
        await expect_code(api.create(self.create_request(sandbox_id)), grpc.StatusCode.ALREADY_EXISTS)
        assert (await api.status(sandbox_id)).state == READY

    async def test_hostile_ids(self, api: SandboxApiClient) -> None:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        for bad in HOSTILE_IDS:
            await expect_code(api.call("Create", self.create_request(bad)), invalid)
            await expect_code(api.start(bad), invalid)
            await expect_code(api.status(bad), invalid)
            await expect_code(api.wait(bad), invalid)
            await expect_code(api.stop(bad), invalid)
            await expect_code(api.shutdown(bad), invalid)
            await expect_code(api.call("Platform", sandbox_pb2.ControllerPlatformRequest(sandbox_id=bad)),
                              invalid)
            await expect_code(api.call("Metrics", sandbox_pb2.ControllerMetricsRequest(sandbox_id=bad)),
                              invalid)
            await expect_code(api.call("Update", update_request(bad, b"")), invalid)

    async def test_start_twice(self, api: SandboxApiClient) -> None:
        sandbox_id, started = await self._running(api)
        await expect_code(api.start(sandbox_id), grpc.StatusCode.FAILED_PRECONDITION)
        status = await api.status(sandbox_id)
        assert status.state == READY and status.pid == started.pid

    async def test_start_after_stop(self, api: SandboxApiClient) -> None:
        sandbox_id, _ = await self._running(api)
        await api.stop(sandbox_id)
        await expect_code(api.start(sandbox_id), grpc.StatusCode.FAILED_PRECONDITION)
        assert (await api.status(sandbox_id)).state == NOT_READY

    # -- bad input and vanishing clients ----------------------------------------------------------

    async def test_malformed_protobuf(self, api: SandboxApiClient) -> None:
        for method in ("Create", "Start", "Status", "Wait", "Update"):
            for payload in (b"\x0a\x05ab", b"\x0a\x02\xff\xfe", b"\xff\xff\xff\xff"):
                await expect_code(api.raw(method, payload), grpc.StatusCode.INVALID_ARGUMENT)
        sandbox_id, _ = await self._running(api)
        assert (await api.status(sandbox_id)).state == READY

    async def test_malformed_pod_config(self, api: SandboxApiClient) -> None:
        request = self.create_request(self.new_id())
        request.options.value = b"\x0a\x05ab"
        await expect_code(api.create(request), grpc.StatusCode.INVALID_ARGUMENT)
        await expect_code(api.status(request.sandbox_id), grpc.StatusCode.NOT_FOUND)

    async def test_client_disconnects_during_wait(self, api: SandboxApiClient) -> None:
        import pytest

        sandbox_id, _ = await self._running(api)
        other = SandboxApiClient(api.address)
        abandoned = other.wait(sandbox_id)
        await asyncio.sleep(0.2)
        await other.close()
        with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
            await abandoned
        cancelled = api.wait(sandbox_id)
        await asyncio.sleep(0.1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert (await api.status(sandbox_id)).state == READY
        wait = api.wait(sandbox_id)
        await api.stop(sandbox_id)
        assert (await asyncio.wait_for(wait, 10)).HasField("exited_at")

    # -- Update (extensions.tasks) ----------------------------------------------------------------

    async def test_update_other_fields_ignored(self, api: SandboxApiClient) -> None:
        sandbox_id, _ = await self._running(api)
        await api.call("Update", sandbox_pb2.ControllerUpdateRequest(sandbox_id=sandbox_id, fields=["labels"]))
        assert (await api.status(sandbox_id)).state == READY

    async def test_update_invalid_tasks(self, api: SandboxApiClient) -> None:
        sandbox_id, _ = await self._running(api)
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        for value in (b"{not json", b"[]", b'{"tasks": {}}', b'{"tasks": [{"task_id": "../x"}]}',
                      b'{"tasks": [{"task_id": "c1"}, {"task_id": "c1"}]}',
                      b'{"tasks": [{"task_id": "c1", "processes": [{"exec_id": "a/b"}]}]}',
                      b'{"tasks": [{"task_id": "c1", "rootfs": [{"source": "/x"}]}]}'):
            await expect_code(api.call("Update", update_request(sandbox_id, value)), invalid)
        missing = sandbox_pb2.ControllerUpdateRequest(sandbox_id=sandbox_id, fields=["extensions.tasks"])
        await expect_code(api.call("Update", missing), invalid)
        assert (await api.status(sandbox_id)).state == READY
