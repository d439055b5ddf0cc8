"""Guest events to containerd: every ready pod's GetEvents long-poll, forwarded to ``Events/Forward``.

Upstream's sandboxer forwards the guest's OOM events (topic ``/tasks/oom``, namespace ``k8s.io``) to
containerd's ttrpc events service, which is how the CRI plugin learns that a container was OOM-killed
(its status reason "OOMKilled"). Here one poller task per ready pod long-polls
``grpc.SandboxService/GetEvents`` through the relay (:meth:`GuestClient.events`) and puts each envelope
in one bounded queue; one sender forwards them on a single connection to
``containerd.services.events.ttrpc.v1.Events/Forward``, reconnecting as needed. A poller asks the guest
again only once its envelope was forwarded (or dropped): the guest keeps an envelope until then and
hands it out again when the connection closes first (a sandboxer restart), so none is lost in between.
Containerd may be away for a while (restarting): an envelope is retried with backoff for
:attr:`EventForwarder.retry_for` seconds and then dropped, and while the queue is full (more pods with an
event waiting than it holds) the oldest envelope is dropped; both are logged.
An unreachable containerd is warned about once per outage. Pollers retry a lost guest connection with
backoff until the pod stops (:meth:`EventForwarder.stop`).
"""
from __future__ import annotations

import asyncio
import logging
from typing import Dict, Optional, Set, Tuple

from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.errors import Cancelled, DeadlineExceeded, KuasarError, Unavailable, Unimplemented
from kuasar_shared.ttrpc import Client

from kuasar_vmm_sandboxer.guest import GuestClient

__all__ = ["EventForwarder", "EVENTS_SERVICE"]

log = logging.getLogger(__name__)

EVENTS_SERVICE = "containerd.services.events.ttrpc.v1.Events"
#: errors after which trying again may work (containerd restarting, a dropped connection)
_TRANSIENT = (Unavailable, DeadlineExceeded, Cancelled)
_FORWARD_TIMEOUT = 5.0


async def _end(task: "asyncio.Task[None]") -> None:
    """Cancel ``task`` and wait for it. Cancelled again while it runs: before Python 3.12,
    ``asyncio.wait_for`` swallows a cancellation that arrives as its inner future completes (a ttrpc
    answer arriving just then), and the task would carry on."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.5)


def _settle(done: "asyncio.Future[None]") -> None:
    if not done.done():
        done.set_result(None)


class EventForwarder:
    """Pollers for the ready pods and the sender to containerd at ``address`` (a unix socket path).

    Resource handling: tasks start with the first :meth:`start`; :meth:`stop` ends one pod's poller,
    :meth:`close` every task and the containerd connection.
    """

    def __init__(self, address: str, queue_size: int = 256, retry_for: float = 10.0,
                 poll_backoff: Tuple[float, float] = (0.1, 5.0)) -> None:
        self.address = address
        self.retry_for = retry_for
        self.poll_backoff = poll_backoff
        self.forwarded = 0
        self.dropped = 0
        self._queue: "Optional[asyncio.Queue[Tuple[str, events_pb2.Envelope, asyncio.Future[None]]]]" = None
        self._queue_size = queue_size
        self._pollers: Dict[str, "asyncio.Task[None]"] = {}
        self._sender: "Optional[asyncio.Task[None]]" = None
        self._client: Optional[Client] = None
        self._unreachable = False

    def __repr__(self) -> str:
        return "EventForwarder(%s, pods=%d, forwarded=%d, dropped=%d)" % (
            self.address, len(self._pollers), self.forwarded, self.dropped)

    @property
    def pods(self) -> Set[str]:
        """The pods being polled."""
        return set(self._pollers)

    def start(self, sandbox_id: str, guest: GuestClient) -> None:
        """Poll the pod's guest (a poller already running for it is replaced)."""
        if self._queue is None:
            self._queue = asyncio.Queue(self._queue_size)
            self._sender = asyncio.ensure_future(self._send_loop())
        old = self._pollers.pop(sandbox_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.ensure_future(self._poll(sandbox_id, guest))
        self._pollers[sandbox_id] = task
        task.add_done_callback(lambda t: self._poller_done(sandbox_id, t))

    def _poller_done(self, sandbox_id: str, task: "asyncio.Task[None]") -> None:
        if self._pollers.get(sandbox_id) is task:
            del self._pollers[sandbox_id]

    async def stop(self, sandbox_id: str) -> None:
        """Stop polling the pod (idempotent); envelopes already queued are still forwarded."""
        task = self._pollers.pop(sandbox_id, None)
        if task is not None:
            await _end(task)

    async def close(self) -> None:
        tasks = list(self._pollers.values()) + ([self._sender] if self._sender is not None else [])
        self._pollers.clear()
        await asyncio.gather(*(_end(task) for task in tasks))
        self._sender = None
        await self._disconnect()

    # --- pollers -------------------------------------------------------------------------------
    async def _poll(self, sandbox_id: str, guest: GuestClient) -> None:
        low, high = self.poll_backoff
        delay = low
        warned = False
        while True:
            events = guest.events()
            try:
                async for env in events:
                    delay, warned = low, False
                    await self._enqueue(sandbox_id, env)  # the next GetEvents acknowledges it
            except Unimplemented as err:
                log.warning("sandbox %s: the guest agent has no GetEvents (%s); its events are not forwarded",
                            sandbox_id, err)
                return
            except KuasarError as err:
                (log.debug if warned else log.warning)("sandbox %s: event poll failed (%s); retrying",
                                                       sandbox_id, err)
                warned = True
            finally:
                await events.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, high)

    async def _enqueue(self, sandbox_id: str, env: events_pb2.Envelope) -> None:
        """Queue ``env`` for the sender; return once it was forwarded or dropped."""
        assert self._queue is not None
        log.info("sandbox %s: guest event %s", sandbox_id, env.topic)
        if self._queue.full():
            old_id, old, settled = self._queue.get_nowait()
            self.dropped += 1
            log.warning("event queue full (%d): dropped %s of sandbox %s", self._queue.maxsize, old.topic, old_id)
            _settle(settled)
        done: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((sandbox_id, env, done))
        await done

    # --- sender --------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        assert self._queue is not None
        while True:
            sandbox_id, env, done = await self._queue.get()
            try:
                await self._deliver(sandbox_id, env)
            finally:
                _settle(done)

    async def _connect(self) -> Client:
        if self._client is None or self._client.closed:
            await self._disconnect()
            self._client = await Client.connect_unix(self.address, timeout=_FORWARD_TIMEOUT)
        return self._client

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _deliver(self, sandbox_id: str, env: events_pb2.Envelope) -> None:
        """Forward one envelope, retrying transient failures for :attr:`retry_for` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        delay = 0.05
        while True:
            try:
                client = await self._connect()
                await client.call(EVENTS_SERVICE, "Forward", events_pb2.ForwardRequest(envelope=env),
                                  empty_pb2.Empty, timeout=_FORWARD_TIMEOUT)
            except _TRANSIENT as err:
                await self._disconnect()
                if not self._unreachable:
                    self._unreachable = True
                    log.warning("cannot forward events to containerd at %s: %s (retrying each event for "
                                "%.0f s)", self.address, err, self.retry_for)
                if loop.time() + delay > deadline:
                    self.dropped += 1
                    log.warning("sandbox %s: dropped event %s: containerd at %s unreachable for %.0f s",
                                sandbox_id, env.topic, self.address, self.retry_for)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            except KuasarError as err:
                self.dropped += 1
                log.error("sandbox %s: containerd refused event %s: %s", sandbox_id, env.topic, err)
                return
            if self._unreachable:
                self._unreachable = False
                log.info("containerd events service at %s reachable again", self.address)
            self.forwarded += 1
            log.info("sandbox %s: forwarded %s to containerd", sandbox_id, env.topic)
            return
