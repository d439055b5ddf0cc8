"""Tests of kuasar_shared.sandbox.controller: the conformance suite on the in-memory sandboxer, plus
the conversions and error mapping the controller alone is responsible for."""
from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any, AsyncIterator, Optional

import grpc
import pytest
import pytest_asyncio
from google.protobuf import any_pb2, timestamp_pb2

from kuasar_shared.api.cgroups.v1 import metrics_pb2 as cgroups_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.containerd.types import mount_pb2
from kuasar_shared.api.containerd.types import sandbox_pb2 as types_sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as cri_pb2
from kuasar_shared.errors import Unimplemented
from kuasar_shared.sandbox import controller
from kuasar_shared.sandbox.api import CreateSandbox, ExitStatus, SandboxStatus, TaskDiff
from kuasar_shared.sandbox.server import serve_sandbox_api
from kuasar_shared.values import CgroupStats, Mount
from kuasar_shared.testing.conformance import SandboxApiClient, SandboxerConformance, expect_code
from kuasar_shared.testing.memory import InMemorySandboxer


class TestInMemoryConformance(SandboxerConformance):
    @pytest.fixture
    def sandboxer(self, tmp_path: Any) -> InMemorySandboxer:
        return InMemorySandboxer(str(tmp_path))


class RecordingSandboxer(InMemorySandboxer):
    """InMemorySandboxer that records what the controller handed it and can misbehave on demand."""

    def __init__(self) -> None:
        super().__init__("/run/kuasar-test")
        self.created: list[CreateSandbox] = []
        self.diffs: list[TaskDiff] = []
        self.stops: list[tuple[str, Optional[int]]] = []
        self.stats: Optional[CgroupStats] = CgroupStats()
        self.never_ready = False
        self.crash: Optional[Exception] = None
        self.cancelled_waits = 0

    async def create(self, req: CreateSandbox) -> None:
        if self.crash is not None:
            raise self.crash
        self.created.append(req)
        await super().create(req)

    async def start(self, id: str) -> SandboxStatus:
        status = await super().start(id)
        if self.never_ready:
            return SandboxStatus(id=id, ready=False)
        return status

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        self.stops.append((id, timeout_secs))
        await super().stop(id, timeout_secs)

    async def wait(self, id: str) -> ExitStatus:
        try:
            return await super().wait(id)
        except asyncio.CancelledError:
            self.cancelled_waits += 1
            raise

    async def metrics(self, id: str) -> Optional[CgroupStats]:
        await super().metrics(id)
        return self.stats

    async def update_tasks(self, id: str, diff: TaskDiff) -> None:
        self.diffs.append(diff)
        await asyncio.sleep(0.01)  # give concurrent Updates a chance to interleave
        await super().update_tasks(id, diff)


@pytest.fixture
def recorder() -> RecordingSandboxer:
    return RecordingSandboxer()


@pytest_asyncio.fixture
async def api(recorder: RecordingSandboxer) -> AsyncIterator[SandboxApiClient]:
    with tempfile.TemporaryDirectory(prefix="kuasar-ctl-test-") as tmp:
        server = await serve_sandbox_api(os.path.join(tmp, "s.sock"), recorder)
        client = SandboxApiClient(server.address)
        try:
            yield client
        finally:
            await client.close()
            await server.stop(None)


def _create_request(sandbox_id: str = "pod1") -> sandbox_pb2.ControllerCreateRequest:
    config = cri_pb2.PodSandboxConfig(
        metadata=cri_pb2.PodSandboxMetadata(name="web", namespace="default", uid="u1", attempt=2),
        hostname="web-0",
        linux=cri_pb2.LinuxPodSandboxConfig(
            cgroup_parent="/kubepods/pod1",
            security_context=cri_pb2.LinuxSandboxSecurityContext(
                namespace_options=cri_pb2.NamespaceOption(network=cri_pb2.NODE, pid=cri_pb2.CONTAINER))))
    sandbox = types_sandbox_pb2.Sandbox(sandbox_id=sandbox_id, labels={"name": "web_default_u1_2"},
                                        created_at=timestamp_pb2.Timestamp(seconds=1700000000, nanos=123456789))
    sandbox.extensions["metadata"].CopyFrom(any_pb2.Any(
        type_url="github.com/containerd/cri/pkg/store/sandbox/Metadata", value=b'{"Version":"v1"}'))
    return sandbox_pb2.ControllerCreateRequest(
        sandbox_id=sandbox_id, sandboxer="runc", netns_path="/var/run/netns/cni-1",
        annotations={"a": "b"}, sandbox=sandbox,
        rootfs=[mount_pb2.Mount(type="bind", source="/src", target="/dst", options=["rbind", "ro"])],
        options=any_pb2.Any(type_url="runtime.v1.PodSandboxConfig", value=config.SerializeToString()))


@pytest.mark.asyncio
async def test_create_converts_request(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    request = _create_request()
    await api.create(request)
    (req,) = recorder.created
    assert req.id == "pod1" and req.netns_path == "/var/run/netns/cni-1" and req.sandboxer == "runc"
    assert req.config["metadata"] == {"name": "web", "namespace": "default", "uid": "u1", "attempt": 2}
    assert req.config_raw == request.options.value
    assert req.hostname == "web-0" and req.cgroup_parent == "/kubepods/pod1"
    assert req.host_network and not req.shared_pid and not req.host_pid
    assert req.annotations == {"a": "b"} and req.labels == {"name": "web_default_u1_2"}
    assert req.rootfs == (Mount(type="bind", source="/src", target="/dst", options=("rbind", "ro")),)
    assert req.extensions == {"metadata": ("github.com/containerd/cri/pkg/store/sandbox/Metadata",
                                           b'{"Version":"v1"}')}
    assert req.created_at is not None
    assert (int(req.created_at.timestamp()), req.created_at.microsecond) == (1700000000, 123456)


@pytest.mark.asyncio
async def test_create_without_options(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    await api.create(sandbox_pb2.ControllerCreateRequest(sandbox_id="bare"))
    (req,) = recorder.created
    assert req.config == {} and req.config_raw == b"" and req.created_at is not None
    assert not req.host_network and req.shared_pid and req.hostname == ""


@pytest.mark.asyncio
async def test_start_and_status_shape(api: SandboxApiClient) -> None:
    await api.create(_create_request())
    started = await api.start("pod1")
    assert started.address == "ttrpc+unix:///run/kuasar-test/task.sock" and started.version == 3
    assert started.pid == os.getpid() and not started.labels
    status = await api.status("pod1")
    assert status.state == "SANDBOX_READY" and status.info == {"state": "running"}
    assert status.created_at == started.created_at and not status.HasField("exited_at")
    await api.stop("pod1")
    stopped = await api.status("pod1")
    assert stopped.state == "SANDBOX_NOTREADY" and stopped.pid == 0 and stopped.HasField("exited_at")


@pytest.mark.asyncio
async def test_start_not_ready_is_stopped_and_internal(api: SandboxApiClient,
                                                       recorder: RecordingSandboxer) -> None:
    recorder.never_ready = True
    await api.create(_create_request())
    err = await expect_code(api.start("pod1"), grpc.StatusCode.INTERNAL)
    assert "did not become ready" in err.details()
    assert recorder.stops == [("pod1", None)]


@pytest.mark.asyncio
async def test_stop_timeout(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    await api.create(_create_request())
    await api.start("pod1")
    await api.call("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id="pod1", timeout_secs=7))
    await api.stop("pod1")
    assert recorder.stops == [("pod1", 7), ("pod1", None)]
    assert (await api.wait("pod1")).exit_status == 0


@pytest.mark.asyncio
async def test_disconnect_cancels_pending_wait(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    await api.create(_create_request())
    await api.start("pod1")
    other = SandboxApiClient(api.address)
    pending = other.wait("pod1")
    await asyncio.sleep(0.1)
    await other.close()
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await pending
    for _ in range(100):
        if recorder.cancelled_waits:
            break
        await asyncio.sleep(0.05)
    assert recorder.cancelled_waits == 1
    assert (await api.status("pod1")).state == "SANDBOX_READY"


@pytest.mark.asyncio
async def test_unexpected_exception_is_internal(api: SandboxApiClient, recorder: RecordingSandboxer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    recorder.crash = RuntimeError("disk on fire")
    err = await expect_code(api.create(_create_request()), grpc.StatusCode.INTERNAL)
    assert err.details() == "RuntimeError: disk on fire"
    assert any(r.exc_info for r in caplog.records if r.name == controller.__name__)
    recorder.crash = None
    await api.create(_create_request())
    assert (await api.start("pod1")).pid > 0


@pytest.mark.asyncio
async def test_typed_error_keeps_code(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    recorder.crash = Unimplemented("no such thing here")
    err = await expect_code(api.create(_create_request()), grpc.StatusCode.UNIMPLEMENTED)
    assert err.details() == "no such thing here"


@pytest.mark.asyncio
async def test_metrics_rendered_as_cgroups_v1(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    await api.create(_create_request())
    await api.start("pod1")
    recorder.stats = CgroupStats(cpu_total_ns=10, cpu_user_ns=6, cpu_kernel_ns=4, memory_usage=1000,
                                 memory_limit=4096, memory_max_usage=2000, memory_failcnt=1, memory_rss=700,
                                 memory_cache=300, memory_total_inactive_file=50, pids_current=3,
                                 pids_limit=100)
    reply = await api.call("Metrics", sandbox_pb2.ControllerMetricsRequest(sandbox_id="pod1"))
    assert reply.metrics.id == "pod1" and reply.metrics.HasField("timestamp")
    assert reply.metrics.data.type_url == "io.containerd.cgroups.v1.Metrics"
    metrics = cgroups_pb2.Metrics.FromString(reply.metrics.data.value)
    assert (metrics.cpu.usage.total, metrics.cpu.usage.user, metrics.cpu.usage.kernel) == (10, 6, 4)
    usage = metrics.memory.usage
    assert (usage.usage, usage.limit, usage.max, usage.failcnt) == (1000, 4096, 2000, 1)
    assert (metrics.memory.rss, metrics.memory.cache, metrics.memory.total_inactive_file) == (700, 300, 50)
    assert (metrics.pids.current, metrics.pids.limit) == (3, 100)
    recorder.stats = None
    empty = await api.call("Metrics", sandbox_pb2.ControllerMetricsRequest(sandbox_id="pod1"))
    assert not empty.HasField("metrics")


def _update(sandbox_id: str, doc: Any) -> sandbox_pb2.ControllerUpdateRequest:
    sandbox = types_sandbox_pb2.Sandbox(sandbox_id=sandbox_id)
    sandbox.extensions["tasks"].CopyFrom(any_pb2.Any(type_url="github.com/containerd/containerd/Tasks",
                                                     value=json.dumps(doc).encode()))
    return sandbox_pb2.ControllerUpdateRequest(sandbox_id=sandbox_id, sandboxer="vmm", sandbox=sandbox,
                                               fields=["extensions.tasks"])


@pytest.mark.asyncio
async def test_update_tasks_diffs_against_stored_list(api: SandboxApiClient,
                                                      recorder: RecordingSandboxer) -> None:
    await api.create(_create_request())
    await api.start("pod1")
    c1 = {"task_id": "c1", "spec": {"ociVersion": "1.0.2"}, "stdout": "/fifo/c1-stdout",
          "rootfs": [{"type": "bind", "source": "/base/c1", "target": "/", "options": ["rbind"]}]}
    await api.call("Update", _update("pod1", {"tasks": [c1]}))
    c1_exec = dict(c1, processes=[{"exec_id": "e1", "spec": {"args": ["sh"]}}])
    c2 = {"task_id": "c2"}
    await api.call("Update", _update("pod1", {"tasks": [c1_exec, c2]}))
    await api.call("Update", _update("pod1", {"tasks": [c2]}))
    first, second, third = recorder.diffs
    assert [t.task_id for t in first.added_tasks] == ["c1"] and not first.removed_tasks
    assert first.added_tasks[0].rootfs == (Mount("bind", "/base/c1", "/", ("rbind",)),)
    assert [t.task_id for t in second.added_tasks] == ["c2"]
    assert [(tid, p.exec_id) for tid, p in second.added_processes] == [("c1", "e1")]
    assert [t.task_id for t in third.removed_tasks] == ["c1"] and not third.added_tasks
    assert third.old == second.new


@pytest.mark.asyncio
async def test_concurrent_updates_are_serialized(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    await api.create(_create_request())
    await api.start("pod1")
    lists = [{"tasks": [{"task_id": "c%d" % j} for j in range(i + 1)]} for i in range(5)]
    await asyncio.gather(*(api.call("Update", _update("pod1", doc)) for doc in lists))
    assert len(recorder.diffs) == len(lists)
    for before, after in zip(recorder.diffs, recorder.diffs[1:]):
        assert after.old == before.new


@pytest.mark.asyncio
async def test_update_unsupported_by_sandboxer(api: SandboxApiClient, recorder: RecordingSandboxer) -> None:
    recorder.fail_next("update_tasks", "pod1", Unimplemented("sandbox pod1: no tasks here"))
    await api.create(_create_request())
    await expect_code(api.call("Update", _update("pod1", {"tasks": []})), grpc.StatusCode.UNIMPLEMENTED)


@pytest.mark.parametrize("machine,arch,variant", [("x86_64", "amd64", ""), ("aarch64", "arm64", ""),
                                                  ("armv7l", "arm", "v7"), ("mips", "mips", "")])
def test_host_platform(monkeypatch: pytest.MonkeyPatch, machine: str, arch: str, variant: str) -> None:
    monkeypatch.setattr(controller.platform, "machine", lambda: machine)
    assert controller.host_platform() == controller.platform_pb2.Platform(os="linux", architecture=arch,
                                                                          variant=variant)
