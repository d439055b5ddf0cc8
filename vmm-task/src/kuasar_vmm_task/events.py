"""Guest events for the host's GetEvents long-poll: OOM kills of containers (topic ``/tasks/oom``).

Each container's memory cgroup (v1) gets an eventfd registered through ``cgroup.event_control`` on
``memory.oom_control``; each OOM puts one containerd Envelope in a bounded queue (the oldest is
dropped when the host does not poll).

Delivery is at least once: an envelope handed to a host connection stays pending until that
connection calls GetEvents again (the host asks again only once it has passed the envelope on), and
goes back to the head of the queue when the connection closes first: a sandboxer restarting between
the hand-out and containerd gets it again through its new connection.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from typing import Deque, Dict, Optional, Tuple

from google.protobuf import any_pb2

from kuasar_shared.api.containerd.events import task_pb2
from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.ttrpc import Connection

__all__ = ["EventQueue", "OOM_TOPIC", "NAMESPACE"]

log = logging.getLogger(__name__)

OOM_TOPIC = "/tasks/oom"
NAMESPACE = "k8s.io"


class EventQueue:
    """Envelopes waiting for GetEvents, plus the OOM watches that produce them."""

    def __init__(self, maxsize: int = 1024, cgroup_root: str = "/sys/fs/cgroup/memory") -> None:
        self.maxsize = maxsize
        self._queue: Deque[events_pb2.Envelope] = deque()
        self._arrived = asyncio.Event()
        #: the envelope each host connection was given and has not acknowledged yet
        self._pending: Dict[Connection, events_pb2.Envelope] = {}
        self._watches: Dict[str, Tuple[int, int, str]] = {}
        self.cgroup_root = cgroup_root

    @property
    def unacknowledged(self) -> int:
        """How many envelopes were handed out and not acknowledged yet."""
        return len(self._pending)

    def publish(self, topic: str, event: object) -> None:
        env = events_pb2.Envelope(namespace=NAMESPACE, topic=topic)
        env.timestamp.GetCurrentTime()
        packed = any_pb2.Any()
        packed.Pack(event)  # type: ignore[arg-type]
        env.event.CopyFrom(packed)
        if len(self._queue) >= self.maxsize:
            dropped = self._queue.popleft()
            log.warning("event queue full: dropped %s", dropped.topic)
        self._queue.append(env)
        self._arrived.set()

    async def next(self, connection: Optional[Connection] = None) -> "events_pb2.Envelope":
        """The oldest envelope, waiting for one. ``connection``'s call acknowledges what it was given
        before; the envelope returned now is pending on it until its next call or its close."""
        if connection is not None:
            self._pending.pop(connection, None)
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        env = self._queue.popleft()
        if connection is not None:
            if connection not in self._pending:
                connection.on_close(lambda: self._return(connection))
            self._pending[connection] = env
        return env

    def _return(self, connection: Connection) -> None:
        env = self._pending.pop(connection, None)
        if env is not None:
            log.info("host connection closed before acknowledging %s: queued again", env.topic)
            self._queue.appendleft(env)
            self._arrived.set()

    def watch_oom(self, container_id: str, cgroups_path: str) -> bool:
        """Report OOMs in ``<cgroup_root>/<cgroups_path>``; False when that is impossible here."""
        eventfd = getattr(os, "eventfd", None)
        directory = os.path.join(self.cgroup_root, cgroups_path.lstrip("/"))
        if eventfd is None or not os.path.isdir(directory):
            return False
        efd = eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(os.path.join(directory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                with open(os.path.join(directory, "cgroup.event_control"), "w") as handle:
                    handle.write(f"{efd} {ofd}")
            except OSError:
                os.close(ofd)
                raise
        except OSError as err:
            os.close(efd)
            log.warning("container %s: no OOM events: %s", container_id, err)
            return False
        asyncio.get_running_loop().add_reader(efd, self._on_oom, container_id, efd)
        self._watches[container_id] = (efd, ofd, directory)
        return True

    def _on_oom(self, container_id: str, efd: int) -> None:
        try:
            os.read(efd, 8)
        except BlockingIOError:
            return
        except OSError:
            self.unwatch(container_id)
            return
        watch = self._watches.get(container_id)
        if watch is None or not os.path.isdir(watch[2]):  # the cgroup went away: that also signals
            self.unwatch(container_id)
            return
        log.info("container %s: OOM", container_id)
        self.publish(OOM_TOPIC, task_pb2.TaskOOM(container_id=container_id))

    def unwatch(self, container_id: str) -> None:
        fds = self._watches.pop(container_id, None)
        if fds is not None:
            asyncio.get_running_loop().remove_reader(fds[0])
            os.close(fds[0])
            os.close(fds[1])

    def close(self) -> None:
        for cid in list(self._watches):
            self.unwatch(cid)
