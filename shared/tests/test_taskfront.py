"""The task front (a real ``python -I -S taskfront.py`` process) in front of in-process task servers
that go away and come back: held Waits, calls with effects run once, streams failed, bounds."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from typing import AsyncIterator, Optional

import pytest
from google.protobuf import empty_pb2

from kuasar_shared import taskfront
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.errors import NotFound, ResourceExhausted, Unavailable, from_code
from kuasar_shared.task import CgroupStats, ExitInfo, ProcessState, Stdio, TaskBackend, TaskService, TaskStatus
from kuasar_shared.task.journal import RequestJournal
from kuasar_shared.ttrpc import Client, Server, Service, framing

TASK = "containerd.task.v3.Task"


class ToyBackend(TaskBackend):
    """One container ``c``: Create counts executions (and may hang), Wait answers when ``exit`` is set."""

    def __init__(self, executed: list[str], hang_create: bool = False) -> None:
        self.executed = executed
        self.hang_create = hang_create
        self.exit: "asyncio.Future[int]" = asyncio.get_running_loop().create_future()
        self.created = asyncio.Event()
        self.pid = 0

    async def create(self, req):  # type: ignore[no-untyped-def]
        self.executed.append("create")
        self.created.set()
        if self.hang_create:
            await asyncio.Event().wait()
        self.pid = 4242
        return self.pid

    async def state(self, id, exec_id):  # type: ignore[no-untyped-def]
        if not self.pid:
            raise NotFound(f"container {id} not found")
        return ProcessState(id, exec_id, "/b", self.pid, TaskStatus.CREATED, Stdio())

    async def wait(self, id, exec_id):  # type: ignore[no-untyped-def]
        return ExitInfo(self.pid, await asyncio.shield(self.exit), None)

    async def start(self, id, exec_id):  # type: ignore[no-untyped-def]
        self.executed.append("start")
        return self.pid

    async def delete(self, id, exec_id):  # type: ignore[no-untyped-def]
        raise NotFound(id)

    async def exec(self, req):  # type: ignore[no-untyped-def]
        pass

    async def kill(self, id, exec_id, signal, all):  # type: ignore[no-untyped-def]
        self.executed.append(f"kill {signal}")

    async def pids(self, id):  # type: ignore[no-untyped-def]
        return [self.pid]

    async def stats(self, id):  # type: ignore[no-untyped-def]
        return CgroupStats()


class Backends:
    """Task servers started one after another on the private socket, sharing one journal dir."""

    def __init__(self, path: str, journal_dir: str) -> None:
        self.path = path
        self.journal_dir = journal_dir
        self.executed: list[str] = []
        self.server: Optional[Server] = None
        self.backend: Optional[ToyBackend] = None

    async def start(self, hang_create: bool = False, extra: tuple = ()) -> ToyBackend:
        self.backend = ToyBackend(self.executed, hang_create)
        self.server = Server([*TaskService(self.backend, RequestJournal(self.journal_dir)).services(), *extra])
        await self.server.listen_unix(self.path)
        return self.backend

    async def crash(self) -> None:
        """What the front sees of a kill -9: every connection closes with its calls unanswered."""
        assert self.server is not None
        await self.server.shutdown()


@pytest.fixture
async def front(tmp_path) -> AsyncIterator[tuple[str, Backends, subprocess.Popen]]:
    listen, backend = str(tmp_path / "task.sock"), str(tmp_path / "backend.sock")
    proc = subprocess.Popen([sys.executable, "-I", "-S", taskfront.__file__, "--listen", listen, "--backend",
                             backend, "--max-connections", "4"], stderr=subprocess.PIPE)
    backends = Backends(backend, str(tmp_path / "journal"))
    for _ in range(200):
        if os.path.exists(listen):
            break
        await asyncio.sleep(0.02)
    yield listen, backends, proc
    if backends.server is not None:
        await backends.server.shutdown()
    proc.send_signal(signal.SIGTERM)
    proc.wait()


def test_front_imports_nothing_heavy() -> None:
    """The point of the front is to stay small and never need an upgrade: only C modules and struct."""
    out = subprocess.run([sys.executable, "-I", "-S", "-c",
                          f"import sys; sys.argv=['x']; exec(open({taskfront.__file__!r}).read().replace("
                          f"'__main__', '__nope__')); print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True).stdout
    for heavy in ("asyncio", "google", "grpc", "kuasar_shared", "argparse", "socket", "enum"):
        assert f"'{heavy}'" not in out


def test_envelope_and_tag_roundtrip() -> None:
    req = request_pb2.Request(service=TASK, method="Create", payload=b"\x0a\x01c", timeout_nano=5)
    req.metadata.add(key="containerd-namespace-ttrpc", value="k8s.io")
    data = req.SerializeToString()
    assert taskfront.envelope(data) == (TASK.encode(), b"Create")
    tagged = request_pb2.Request.FromString(taskfront.tag(data, b"ab-1-3"))
    assert [(m.key, m.value) for m in tagged.metadata] == [("containerd-namespace-ttrpc", "k8s.io"),
                                                            ("kuasar-request-id", "ab-1-3")]
    assert tagged.payload == b"\x0a\x01c" and tagged.timeout_nano == 5
    assert taskfront.envelope(b"\xff") == (b"", b"")


@pytest.mark.asyncio
async def test_wait_held_across_a_crash_gets_the_real_exit_status(front) -> None:
    listen, backends, _ = front
    await backends.start()
    client = await Client.connect_unix(listen)
    try:
        await client.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"), shim_pb2.CreateTaskResponse)
        wait = asyncio.ensure_future(client.call(TASK, "Wait", shim_pb2.WaitRequest(id="c"), shim_pb2.WaitResponse))
        await asyncio.sleep(0.2)
        await backends.crash()
        state = asyncio.ensure_future(client.call(TASK, "State", shim_pb2.StateRequest(id="c"),
                                                  shim_pb2.StateResponse))
        await asyncio.sleep(0.3)
        assert not wait.done() and not state.done()
        successor = await backends.start()
        successor.pid = 4242  # re-adopted
        assert (await asyncio.wait_for(state, 10)).pid == 4242
        successor.exit.set_result(42)
        assert (await asyncio.wait_for(wait, 10)).exit_status == 42
        assert not client.closed
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_create_answered_before_the_crash_is_not_run_again(front) -> None:
    """The answer of a finished call is journaled; a replay (same request id) gets it, nothing runs."""
    listen, backends, _ = front
    await backends.start()
    client = await Client.connect_unix(listen)
    try:
        resp = await client.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"),
                                 shim_pb2.CreateTaskResponse)
        assert resp.pid == 4242
        [entry] = os.listdir(backends.journal_dir)
        await backends.crash()
        await backends.start()
        replayed = await Client.connect_unix(backends.path)
        try:
            again = await replayed.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"),
                                        shim_pb2.CreateTaskResponse, metadata={"kuasar-request-id": entry})
        finally:
            await replayed.close()
        assert again.pid == 4242 and backends.executed == ["create"]
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_create_interrupted_by_a_crash_is_settled_not_repeated(front) -> None:
    """Create was running when the server died: the successor finds the container made and answers
    its pid instead of creating it twice; a Kill that never reached a server runs once."""
    listen, backends, _ = front
    first = await backends.start(hang_create=True)
    client = await Client.connect_unix(listen)
    try:
        create = asyncio.ensure_future(client.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"),
                                                   shim_pb2.CreateTaskResponse))
        await asyncio.wait_for(first.created.wait(), 10)
        await backends.crash()
        kill = asyncio.ensure_future(client.call(TASK, "Kill", shim_pb2.KillRequest(id="c", signal=9),
                                                 empty_pb2.Empty))
        await asyncio.sleep(0.2)
        successor = await backends.start()
        successor.pid = 777  # the container the dead server made, as recovered
        assert (await asyncio.wait_for(create, 10)).pid == 777
        await asyncio.wait_for(kill, 10)
        assert backends.executed == ["create", "kill 9"]
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_streams_fail_with_unavailable_and_the_connection_stays(front) -> None:
    listen, backends, _ = front
    held = Service("test.Held")

    async def forever(ctx, stream):  # type: ignore[no-untyped-def]
        await asyncio.Event().wait()
    held.stream("Hold", forever)
    await backends.start(extra=(held,))
    client = await Client.connect_unix(listen)
    try:
        stream = await client.stream("test.Held", "Hold")
        await asyncio.sleep(0.2)
        await backends.crash()
        with pytest.raises(Unavailable, match="task server restarted"):
            await asyncio.wait_for(stream.recv(), 10)
        await backends.start()
        await client.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"), shim_pb2.CreateTaskResponse)
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_connection_limit_and_oversized_frames(front) -> None:
    listen, backends, _ = front
    await backends.start()
    clients = [await Client.connect_unix(listen) for _ in range(3)]
    reader, writer = await asyncio.open_unix_connection(listen)
    try:
        extra_reader, extra_writer = await asyncio.open_unix_connection(listen)
        assert await asyncio.wait_for(extra_reader.read(), 10) == b""  # closed: 4 are open
        extra_writer.close()
        writer.write(framing.HEADER.pack(framing.MAX_MESSAGE + 1, 1, framing.TYPE_REQUEST, 0))
        writer.write(b"\0" * (framing.MAX_MESSAGE + 1))
        await writer.drain()
        frame = await asyncio.wait_for(framing.read_frame(reader), 10)
        assert frame.type == framing.TYPE_RESPONSE and frame.stream_id == 1
        status = request_pb2.Response.FromString(frame.data).status
        assert isinstance(from_code(status.code, status.message), ResourceExhausted)
        await clients[0].call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"),
                              shim_pb2.CreateTaskResponse)
    finally:
        writer.close()
        for c in clients:
            await c.close()


async def test_an_idle_front_whose_socket_is_gone_exits(front) -> None:
    """A front nobody can reach any more (its directory was removed) does not linger."""
    listen, _, proc = front
    os.unlink(listen)
    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30) == 0


async def test_requests_in_flight_are_bounded_over_all_connections(tmp_path) -> None:
    """With a 1 MiB budget, a second 800 KiB request waits in the front until the first is answered:
    neither the front nor the task server holds more than the budget of requests at once."""
    listen, backend_path = str(tmp_path / "task.sock"), str(tmp_path / "backend.sock")
    arrived: list[str] = []
    release = asyncio.Event()
    big = Service("test.Big")

    async def hold(ctx, req):  # type: ignore[no-untyped-def]
        arrived.append(req.id[0])
        await release.wait()
        return shim_pb2.StateResponse(id=req.id[0])
    big.unary("Hold", shim_pb2.StateRequest, hold)
    server = Server([big])
    await server.listen_unix(backend_path)
    proc = subprocess.Popen([sys.executable, "-I", "-S", taskfront.__file__, "--listen", listen, "--backend",
                             backend_path, "--inflight-limit", str(1 << 20)])
    clients: list[Client] = []
    try:
        for _ in range(200):
            if os.path.exists(listen):
                break
            await asyncio.sleep(0.02)
        clients = [await Client.connect_unix(listen) for _ in range(2)]
        calls = [asyncio.ensure_future(c.call("test.Big", "Hold", shim_pb2.StateRequest(id=name * (800 << 10)),
                                              shim_pb2.StateResponse)) for c, name in zip(clients, "ab")]
        for _ in range(100):
            if arrived:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        assert len(arrived) == 1
        release.set()
        answers = await asyncio.wait_for(asyncio.gather(*calls), 10)
        assert sorted(answer.id for answer in answers) == ["a", "b"]
        assert sorted(arrived) == ["a", "b"]
    finally:
        for c in clients:
            await c.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        await server.shutdown()


def test_a_backend_that_dies_at_the_first_send_after_reconnecting_keeps_the_front_up(tmp_path) -> None:
    """Reconnecting sends the calls in flight before the new connection is registered with epoll; when the
    task server dies right then (EPIPE), the front must drop that connection and wait again, not crash (it
    did: unregistering an fd epoll never had) and take every engine connection with it."""
    backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    backend.bind(str(tmp_path / "backend.sock"))
    backend.listen(4)
    front = taskfront.Front(str(tmp_path / "front.sock"), str(tmp_path / "backend.sock"))
    engine, esock = socket.socketpair()
    try:
        link = taskfront.Link(front, esock, 1)
        front.links.add(link)
        call = b"\0" * 16
        link.pending[1] = (call, True, 0)
        assert front._connect(link)  # what _reconnect does: attach (calls in flight queued), then _update
        accepted, _ = backend.accept()
        accepted.close()  # the task server dies before reading anything
        front._update(link)
        assert link.bsock is None and link in front.waiting, "the lost connection is dropped and waited out"
        assert link.pending == {1: (call, True, 0)}, "the call in flight is kept for the next task server"
        assert link in front.links
    finally:
        engine.close()
        backend.close()
        front.listener.close()
