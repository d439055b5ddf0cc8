"""sandbox: grpc.SandboxService handlers, served over a real ttrpc connection on the serial mux."""
import asyncio
import json

import pytest
from google.protobuf import empty_pb2

from kuasar_shared import errors
from kuasar_shared.testing.mux import mux_client, mux_host
from kuasar_shared.api.containerd.events import task_pb2
from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.ttrpc import Client, Server
from kuasar_vmm_task.events import OOM_TOPIC, EventQueue
from kuasar_vmm_task.sandbox import SERVICE, SandboxService


class FakeNamespaces:
    def __init__(self):
        self.created = []

    async def create(self, hostname, share_pid, sysctls=None):
        self.created.append((hostname, share_pid))
        self.sysctls = dict(sysctls or {})


@pytest.fixture
async def guest(tmp_path):
    """(client, service) where the client reaches the service through a host/guest mux pair."""
    clock = iter(range(1000, 10 ** 6, 1000))
    set_clock = []
    events = EventQueue()
    svc = SandboxService(events, FakeNamespaces(), clock=lambda: next(clock), set_clock=set_clock.append)
    svc.set_calls = set_clock
    server = Server([svc.service()])
    async with mux_client(server) as client:
        yield client, svc


async def call(client, method, req, resp_type, timeout=10):
    return await client.call(SERVICE, method, req, resp_type, timeout=timeout)


async def test_check(guest):
    client, _ = guest
    assert await call(client, "Check", sandbox_pb2.CheckRequest(service="x"), empty_pb2.Empty) == empty_pb2.Empty()


async def test_setup_sandbox_once(guest, monkeypatch):
    client, svc = guest
    req = sandbox_pb2.SetupSandboxRequest()
    req.config.type_url = "PodSandboxConfig"
    req.config.value = json.dumps({"hostname": "p1", "linux": {"security_context": {
        "namespace_options": {"pid": 1}}}}).encode()
    monkeypatch.setattr("kuasar_vmm_task.pod.pod_hostname", lambda cfg: cfg.hostname)
    await call(client, "SetupSandbox", req, empty_pb2.Empty)
    assert svc.pod_ns.created == [("p1", False)]
    assert svc.pod_ns.sysctls == {}  # the pod's sysctls go to the namespaces too (IPC ones are set there)
    with pytest.raises(errors.FailedPrecondition, match="already set up"):
        await call(client, "SetupSandbox", req, empty_pb2.Empty)


async def test_setup_sandbox_bad_config(guest):
    client, svc = guest
    req = sandbox_pb2.SetupSandboxRequest()
    req.config.type_url = "type.googleapis.com/runtime.v1.PodSandboxConfig"
    with pytest.raises(errors.NotFound, match="PodSandboxConfig"):
        await call(client, "SetupSandbox", req, empty_pb2.Empty)
    req.config.type_url = "PodSandboxConfig"
    req.config.value = b"{broken"
    with pytest.raises(errors.InvalidArgument, match="not JSON"):
        await call(client, "SetupSandbox", req, empty_pb2.Empty)
    assert not svc.setup_done and not svc.pod_ns.created


async def test_exec_vm_process(guest):
    client, _ = guest
    resp = await call(client, "ExecVMProcess", sandbox_pb2.ExecVMProcessRequest(
        command="read x; echo got $x; echo err >&2; exit 3", stdin=b"hello\n"), sandbox_pb2.ExecVMProcessResponse)
    assert resp.out == "got hello\nerr\n"


async def test_exec_vm_process_deadline_kills(guest):
    client, _ = guest
    with pytest.raises(errors.DeadlineExceeded):
        await call(client, "ExecVMProcess", sandbox_pb2.ExecVMProcessRequest(command="sleep 30"),
                   sandbox_pb2.ExecVMProcessResponse, timeout=0.5)


async def test_sync_clock_two_phases(guest):
    client, svc = guest
    phase1 = await call(client, "SyncClock", sandbox_pb2.SyncClockPacket(ClientSendTime=7), sandbox_pb2.SyncClockPacket)
    assert phase1.ClientSendTime == 7 and 0 < phase1.ClientArriveTime < phase1.ServerSendTime
    assert svc.set_calls == []
    await call(client, "SyncClock", sandbox_pb2.SyncClockPacket(Delta=500), sandbox_pb2.SyncClockPacket)
    assert len(svc.set_calls) == 1 and svc.set_calls[0] > 500


async def test_get_events_long_poll(guest):
    client, svc = guest
    waiting = asyncio.ensure_future(call(client, "GetEvents", empty_pb2.Empty(), events_pb2.Envelope))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    svc.events.publish(OOM_TOPIC, task_pb2.TaskOOM(container_id="c1"))
    env = await waiting
    oom = task_pb2.TaskOOM()
    assert env.topic == "/tasks/oom" and env.namespace == "k8s.io" and env.event.Unpack(oom)
    assert oom.container_id == "c1"


async def test_event_queue_drops_oldest():
    q = EventQueue(maxsize=2)
    for cid in ("a", "b", "c"):
        q.publish(OOM_TOPIC, task_pb2.TaskOOM(container_id=cid))
    got = []
    for _ in range(2):
        oom = task_pb2.TaskOOM()
        (await q.next()).event.Unpack(oom)
        got.append(oom.container_id)
    assert got == ["b", "c"]
    assert q.watch_oom("c", "/no/such/cgroup") is False


async def test_events_are_delivered_at_least_once():
    """An envelope stays pending on the host connection it was handed to until that connection asks
    again; when the connection closes first, the next connection gets it (a sandboxer restarting
    between the guest and containerd loses no OOM)."""
    events = EventQueue()
    server = Server([SandboxService(events, FakeNamespaces()).service()])

    async def get(client):
        oom = task_pb2.TaskOOM()
        (await call(client, "GetEvents", empty_pb2.Empty(), events_pb2.Envelope)).event.Unpack(oom)
        return oom.container_id

    async def closed(client):
        await client.close()
        for _ in range(200):  # the guest sees the channel close a moment later
            if not events.unacknowledged:
                return
            await asyncio.sleep(0.01)

    async with mux_host(server) as host:
        for cid in ("a", "b"):
            events.publish(OOM_TOPIC, task_pb2.TaskOOM(container_id=cid))
        first = Client(*(await host.open()))
        assert await get(first) == "a"
        await closed(first)  # "a" was never acknowledged
        second = Client(*(await host.open()))
        assert await get(second) == "a"
        assert await get(second) == "b"  # this call acknowledged "a"
        await closed(second)
        third = Client(*(await host.open()))
        assert await get(third) == "b"
        waiting = asyncio.ensure_future(get(third))  # acknowledges "b", then waits
        await asyncio.sleep(0.1)
        events.publish(OOM_TOPIC, task_pb2.TaskOOM(container_id="c"))
        assert await waiting == "c"
        await third.close()
