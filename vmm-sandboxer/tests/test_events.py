"""EventForwarder: guest events (the real vmm-task SandboxService + EventQueue behind a unix socket, standing
in for the relay's task.sock) forwarded to a ttrpc Events service standing in for containerd's."""
from __future__ import annotations

import asyncio
import logging
import os

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.events import task_pb2
from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.config import ConfigError
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.ttrpc import Server, Service
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.events import EVENTS_SERVICE, EventForwarder
from kuasar_vmm_sandboxer.guest import GuestClient
from kuasar_vmm_task.events import OOM_TOPIC, EventQueue
from kuasar_vmm_task.sandbox import SandboxService


class Containerd:
    """containerd's ttrpc Events service, reduced to recording Forward calls (optionally refusing them)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: "asyncio.Queue[events_pb2.Envelope]" = asyncio.Queue()
        self.refuse = False
        svc = Service(EVENTS_SERVICE)
        svc.unary("Forward", events_pb2.ForwardRequest, self.forward)
        self.server = Server([svc])

    async def forward(self, ctx, req):
        if self.refuse:
            raise InvalidArgument("envelope namespace rejected")
        self.received.put_nowait(req.envelope)
        return empty_pb2.Empty()

    async def start(self) -> None:
        await self.server.listen_unix(self.path)

    async def stop(self) -> None:
        await self.server.shutdown()
        os.unlink(self.path)

    async def next_oom(self, timeout: float = 5.0) -> str:
        env = await asyncio.wait_for(self.received.get(), timeout)
        oom = task_pb2.TaskOOM()
        assert env.topic == OOM_TOPIC and env.namespace == "k8s.io" and env.event.Unpack(oom)
        return oom.container_id


class Guest:
    """The guest agent's SandboxService with a real EventQueue, on a unix socket."""

    def __init__(self, path: str, sandbox_service: bool = True) -> None:
        self.path = path
        self.events = EventQueue()
        services = [SandboxService(self.events, pod_ns=None).service()] if sandbox_service else []
        self.server = Server(services)

    async def start(self) -> None:
        await self.server.listen_unix(self.path)

    async def stop(self) -> None:
        await self.server.shutdown()

    def oom(self, container_id: str) -> None:
        self.events.publish(OOM_TOPIC, task_pb2.TaskOOM(container_id=container_id))


@pytest.fixture
async def env(short_tmp):
    guest = Guest(os.path.join(short_tmp, "task.sock"))
    await guest.start()
    containerd = Containerd(os.path.join(short_tmp, "containerd.sock.ttrpc"))
    forwarder = EventForwarder(containerd.path, retry_for=5.0, poll_backoff=(0.02, 0.1))
    yield guest, containerd, forwarder
    await forwarder.close()
    await guest.stop()
    await containerd.server.shutdown()


async def _until(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_oom_event_reaches_containerd(env):
    guest, containerd, forwarder = env
    await containerd.start()
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    guest.oom("c1")
    guest.oom("c2")
    assert [await containerd.next_oom(), await containerd.next_oom()] == ["c1", "c2"]
    await _until(lambda: forwarder.forwarded == 2)
    assert forwarder.dropped == 0 and forwarder.pods == {"pod1"}
    await forwarder.stop("pod1")
    assert forwarder.pods == set()


async def test_containerd_briefly_away_loses_nothing_and_warns_once(env, caplog):
    guest, containerd, forwarder = env
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    with caplog.at_level(logging.WARNING, logger="kuasar_vmm_sandboxer.events"):
        guest.oom("c1")
        guest.oom("c2")
        await asyncio.sleep(0.6)  # a few retries against the missing socket
        await containerd.start()
        assert [await containerd.next_oom(), await containerd.next_oom()] == ["c1", "c2"]
    warnings = [r for r in caplog.records if "cannot forward events" in r.getMessage()]
    assert len(warnings) == 1 and containerd.path in warnings[0].getMessage()
    assert forwarder.dropped == 0


async def test_event_dropped_after_bounded_retries_then_polling_goes_on(env, caplog):
    guest, containerd, forwarder = env
    forwarder.retry_for = 0.3
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    with caplog.at_level(logging.WARNING, logger="kuasar_vmm_sandboxer.events"):
        guest.oom("lost")
        await _until(lambda: forwarder.dropped == 1)
    assert "dropped event /tasks/oom" in caplog.text and "pod1" in caplog.text
    await containerd.start()
    guest.oom("later")
    assert await containerd.next_oom() == "later"


async def test_events_wait_in_the_guest_while_containerd_is_away(env):
    """A poller asks for the next envelope only once the last one was forwarded: one pod's events
    stay in the guest meanwhile, none is dropped on the host, and all arrive in order."""
    guest, containerd, forwarder = env
    forwarder = EventForwarder(containerd.path, queue_size=1, retry_for=30.0, poll_backoff=(0.02, 0.1))
    try:
        forwarder.start("pod1", GuestClient(guest.path, "pod1"))
        for cid in ("a", "b", "c", "d"):
            guest.oom(cid)
        await _until(lambda: guest.events.unacknowledged == 1)
        await asyncio.sleep(0.3)
        assert guest.events.unacknowledged == 1 and forwarder.dropped == 0
        await containerd.start()
        assert [await containerd.next_oom() for _ in range(4)] == ["a", "b", "c", "d"]
        await _until(lambda: forwarder.forwarded == 4)
    finally:
        await forwarder.close()


async def test_full_queue_drops_the_oldest_pod_event(env, short_tmp, caplog):
    """More pods with an event waiting than the queue holds: the oldest queued one is dropped (logged)."""
    guest, containerd, forwarder = env
    guests = [guest] + [Guest(os.path.join(short_tmp, f"task{n}.sock")) for n in (2, 3)]
    for other in guests[1:]:
        await other.start()
    forwarder = EventForwarder(containerd.path, queue_size=1, retry_for=30.0, poll_backoff=(0.02, 0.1))
    try:
        with caplog.at_level(logging.WARNING, logger="kuasar_vmm_sandboxer.events"):
            for n, pod_guest in enumerate(guests, 1):
                forwarder.start(f"pod{n}", GuestClient(pod_guest.path, f"pod{n}"))
                pod_guest.oom(f"c{n}")
                await _until(lambda g=pod_guest: g.events.unacknowledged == 1)  # pod1's is the sender's
            await _until(lambda: forwarder.dropped == 1)
        assert "event queue full (1): dropped /tasks/oom of sandbox pod2" in caplog.text
        await containerd.start()
        assert {await containerd.next_oom(), await containerd.next_oom()} == {"c1", "c3"}
        await _until(lambda: forwarder.forwarded == 2)
    finally:
        await forwarder.close()
        for other in guests[1:]:
            await other.stop()


async def test_an_event_not_forwarded_before_a_restart_is_forwarded_after_it(env):
    """The sandboxer stops after the guest handed an OOM out and before containerd took it: the guest
    gets the connection's close, queues the envelope again, and the next sandboxer forwards it."""
    guest, containerd, forwarder = env
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    guest.oom("c1")
    await _until(lambda: guest.events.unacknowledged == 1)
    await forwarder.close()
    await _until(lambda: guest.events.unacknowledged == 0)
    await containerd.start()
    after = EventForwarder(containerd.path, retry_for=5.0, poll_backoff=(0.02, 0.1))
    try:
        after.start("pod1", GuestClient(guest.path, "pod1"))
        assert await containerd.next_oom() == "c1"
        await _until(lambda: after.forwarded == 1)
    finally:
        await after.close()


async def test_refused_event_is_dropped_without_retry(env, caplog):
    guest, containerd, forwarder = env
    containerd.refuse = True
    await containerd.start()
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    with caplog.at_level(logging.ERROR, logger="kuasar_vmm_sandboxer.events"):
        guest.oom("c1")
        await _until(lambda: forwarder.dropped == 1, timeout=2.0)
    assert "containerd refused event /tasks/oom: envelope namespace rejected" in caplog.text
    containerd.refuse = False
    guest.oom("c2")
    assert await containerd.next_oom() == "c2"


async def test_poller_reconnects_after_the_guest_connection_drops(env):
    guest, containerd, forwarder = env
    await containerd.start()
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    await asyncio.sleep(0.1)
    await guest.stop()  # relay restart / lost VM channel: the long-poll fails
    await asyncio.sleep(0.2)
    events = guest.events
    guest.server = Server([SandboxService(events, pod_ns=None).service()])
    await guest.start()
    guest.oom("after-reconnect")
    assert await containerd.next_oom() == "after-reconnect"
    assert forwarder.pods == {"pod1"}


async def test_restart_replaces_the_poller_and_stop_ends_it(env):
    guest, containerd, forwarder = env
    await containerd.start()
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))
    forwarder.start("pod1", GuestClient(guest.path, "pod1"))  # recovery of a pod already polled
    await asyncio.sleep(0.1)
    guest.oom("once")
    assert await containerd.next_oom() == "once"
    with pytest.raises(asyncio.TimeoutError):
        await containerd.next_oom(timeout=0.3)
    await forwarder.stop("pod1")
    await forwarder.stop("pod1")
    guest.oom("unpolled")
    await asyncio.sleep(0.2)
    assert containerd.received.empty() and forwarder.pods == set()


async def test_guest_without_get_events_ends_its_poller(short_tmp, caplog):
    guest = Guest(os.path.join(short_tmp, "task.sock"), sandbox_service=False)
    await guest.start()
    forwarder = EventForwarder(os.path.join(short_tmp, "containerd.sock.ttrpc"))
    try:
        with caplog.at_level(logging.WARNING, logger="kuasar_vmm_sandboxer.events"):
            forwarder.start("pod1", GuestClient(guest.path, "pod1"))
            await _until(lambda: not forwarder.pods)
        assert "has no GetEvents" in caplog.text
    finally:
        await forwarder.close()
        await guest.stop()


def test_containerd_address_config():
    assert config.VmmConfig().sandbox.containerd_ttrpc_address == "/run/containerd/containerd.sock.ttrpc"
    cfg = config.parse('[sandbox]\ncontainerd_ttrpc_address = "unix:///x/c.sock"\n')
    assert cfg.sandbox.containerd_ttrpc_address == "unix:///x/c.sock"
    assert config.parse('[sandbox]\ncontainerd_ttrpc_address = ""\n').sandbox.containerd_ttrpc_address == ""
    shipped = config.load(__file__.rsplit("/tests/", 1)[0] + "/config_qemu.toml")
    assert shipped.sandbox.containerd_ttrpc_address == config.DEFAULT_CONTAINERD_TTRPC
    for bad in ("vsock://3:1024", "relative/containerd.sock", "tcp://127.0.0.1:1"):
        with pytest.raises(ConfigError) as err:
            config.parse('[sandbox]\ncontainerd_ttrpc_address = "%s"\n' % bad, "/etc/c.toml")
        assert err.value.key == "[sandbox].containerd_ttrpc_address"
