"""The task front (the real ``kuasar-taskfront`` program) in front of in-process task servers that go away
and come back: held Waits, calls with effects run once and tagged as the journal expects, streams failed,
bounds, malformed and oversized frames, its command line and log."""
from __future__ import annotations

import asyncio
import os
import re
import resource
import signal
import subprocess
from pathlib import Path
from typing import AsyncIterator, Callable, Optional

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.errors import NotFound, ResourceExhausted, Unavailable, from_code
from kuasar_shared.sandbox.task_supervisor import front_executable
from kuasar_shared.task import CgroupStats, ExitInfo, ProcessState, Stdio, TaskBackend, TaskService, TaskStatus
from kuasar_shared.task.journal import REQUEST_ID_KEY, RequestJournal
from kuasar_shared.task.service import MUTATING
from kuasar_shared.ttrpc import Client, Server, Service, framing

TASK = "containerd.task.v3.Task"
FRONT = front_executable()


async def start_front(tmp_path: Path, *options: str, name: str = "front",
                      preexec_fn: Optional[Callable[[], None]] = None) -> tuple[subprocess.Popen, str, str]:
    """A front on ``<tmp>/<name>.sock`` for ``<tmp>/backend.sock``, logging to ``<tmp>/<name>.log``: (process,
    listen path, log path) once it listens."""
    listen, log = str(tmp_path / f"{name}.sock"), str(tmp_path / f"{name}.log")
    with open(log, "wb") as out:
        proc = subprocess.Popen([FRONT, "--listen", listen, "--backend", str(tmp_path / "backend.sock"), *options],
                                stderr=out, preexec_fn=preexec_fn)
    for _ in range(200):
        if os.path.exists(listen):
            break
        await asyncio.sleep(0.02)
    return proc, listen, log


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait()


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
    proc, listen, _ = await start_front(tmp_path, "--max-connections", "4")
    backends = Backends(str(tmp_path / "backend.sock"), str(tmp_path / "journal"))
    yield listen, backends, proc
    if backends.server is not None:
        await backends.server.shutdown()
    stop(proc)


def request(sid: int, method: str, message: object = None, service: str = TASK,
            metadata: tuple[tuple[str, str], ...] = ()) -> bytes:
    """An engine's request frame."""
    req = request_pb2.Request(service=service, method=method, timeout_nano=5,
                              payload=message.SerializeToString() if message is not None else b"")  # type: ignore
    for key, value in metadata:
        req.metadata.add(key=key, value=value)
    return framing.encode(sid, framing.TYPE_REQUEST, 0, req.SerializeToString())


class RawBackend:
    """A task server stand-in on the private socket that records every frame it gets and answers none."""

    def __init__(self) -> None:
        self.frames: "asyncio.Queue[tuple[int, framing.Frame]]" = asyncio.Queue()
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, path: str) -> asyncio.AbstractServer:
        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            number = self.connections
            self.writers.append(writer)
            try:
                while True:
                    await self.frames.put((number, await framing.read_frame(reader)))
            except asyncio.IncompleteReadError:
                writer.close()
        return await asyncio.start_unix_server(connection, path)

    async def next(self) -> tuple[int, framing.Frame]:
        return await asyncio.wait_for(self.frames.get(), 10)


async def test_the_front_is_a_small_program_on_libc_alone(tmp_path) -> None:
    """What lets it never need an upgrade and stay small (tests/benchmark/bench_taskfront.py measures it): no
    interpreter, libc only."""
    proc, _, log = await start_front(tmp_path)
    try:
        with open(f"/proc/{proc.pid}/maps") as f:
            libraries = {os.path.basename(line.split()[-1]) for line in f if ".so" in line}
        assert libraries and all(re.match(r"(libc|ld-linux[\w-]*)\.so", lib) for lib in libraries), libraries
        assert "taskfront" in open(f"/proc/{proc.pid}/cmdline").read(), "process lookups find it by name"
    finally:
        stop(proc)
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d task-front\[{proc.pid}\]: serving "
                        rf"{re.escape(str(tmp_path))}/front.sock for the task server at "
                        rf"{re.escape(str(tmp_path))}/backend.sock\n", Path(log).read_text())


async def test_calls_with_effects_are_tagged_with_a_unique_request_id_and_nothing_else_changes(tmp_path) -> None:
    """The tag is the Request's repeated metadata field 5 {key, value} appended, byte for byte what protobuf
    makes of it, with an id the journal accepts: <front instance>-<engine connection>-<stream id>."""
    raw = RawBackend()
    server = await raw.serve(str(tmp_path / "backend.sock"))
    proc, listen, _ = await start_front(tmp_path)
    other, other_listen, _ = await start_front(tmp_path, name="other")
    writers = []
    try:
        ns = (("containerd-namespace-ttrpc", "k8s.io"),)
        create = request(1, "Create", shim_pb2.CreateTaskRequest(id="c", bundle="/b"), metadata=ns)
        untouched = [request(3, "State", shim_pb2.StateRequest(id="c")),
                     request(5, "Wait", shim_pb2.WaitRequest(id="c")),
                     request(7, "Create", service="test.NotTheTaskAPI"),
                     framing.encode(9, framing.TYPE_REQUEST, 0, b"\xff"),  # no envelope at all
                     framing.encode(11, framing.TYPE_REQUEST, 0, b""),
                     framing.encode(13, framing.TYPE_REQUEST, 0, b"\x0a\x7fcontainerd.task.v3.Task")]  # overrun
        kill_v2 = request(15, "Kill", shim_pb2.KillRequest(id="c", signal=9), service="containerd.task.v2.Task")
        ids = []
        for path in (listen, listen, other_listen):
            _, writer = await asyncio.open_unix_connection(path)
            writers.append(writer)
            writer.write(create)
            _, got = await raw.next()
            sent = request_pb2.Request.FromString(create[framing.HEADER.size:])
            tagged = request_pb2.Request.FromString(got.data)
            [(key, request_id)] = [(m.key, m.value) for m in tagged.metadata][1:]
            assert [(m.key, m.value) for m in tagged.metadata][0] == ns[0] and key == REQUEST_ID_KEY
            assert got.data == create[framing.HEADER.size:] + request_pb2.Request(
                metadata=[request_pb2.KeyValue(key=REQUEST_ID_KEY, value=request_id)]).SerializeToString()
            assert (tagged.payload, tagged.timeout_nano, got.stream_id) == (sent.payload, 5, 1)
            assert RequestJournal.valid(request_id)
            ids.append(request_id)
        instance = ids[0].split("-")[0]
        assert re.fullmatch(r"[0-9a-f]{12}", instance)
        assert ids[:2] == [f"{instance}-1-1", f"{instance}-2-1"] and not ids[2].startswith(instance)
        for frame in untouched:
            writers[0].write(frame)
            _, got = await raw.next()
            assert framing.HEADER.pack(len(got.data), got.stream_id, got.type, got.flags) + got.data == frame
        writers[0].write(kill_v2)
        _, got = await raw.next()
        metadata = request_pb2.Request.FromString(got.data).metadata
        assert [(m.key, m.value) for m in metadata] == [(REQUEST_ID_KEY, f"{instance}-1-15")]
        # the program's list of calls with effects is the task server's (task/service.py journals those)
        for sid, method in enumerate(sorted(MUTATING) + ["State", "Pids", "Stats", "Connect", "Wait"], start=17):
            writers[0].write(request(sid, method))
            _, got = await raw.next()
            metadata = request_pb2.Request.FromString(got.data).metadata
            tagged_as = [m.value for m in metadata if m.key == REQUEST_ID_KEY]
            assert tagged_as == ([f"{instance}-1-{sid}"] if method in MUTATING else []), method
    finally:
        for writer in writers:
            writer.close()
        stop(proc)
        stop(other)
        for _ in range(100):  # the fronts' connections close: the recording handlers end
            if all(w.is_closing() for w in raw.writers):
                break
            await asyncio.sleep(0.02)
        server.close()


async def test_truncated_and_garbage_frames_cost_only_their_connection(front) -> None:
    """An engine connection that closes mid-header or mid-body, or sends a request that is no protobuf,
    leaves the front serving the others; a garbage request is answered by the task server, not the front."""
    listen, backends, proc = front
    await backends.start()
    for cut in (b"\0\0\0", framing.HEADER.pack(100, 1, framing.TYPE_REQUEST, 0) + b"x" * 50):
        _, writer = await asyncio.open_unix_connection(listen)
        writer.write(cut)
        await writer.drain()
        writer.close()
    reader, writer = await asyncio.open_unix_connection(listen)
    try:
        writer.write(framing.encode(1, framing.TYPE_REQUEST, 0, b"\xff\xff\xff"))
        frame = await asyncio.wait_for(framing.read_frame(reader), 10)
        assert frame.stream_id == 1 and request_pb2.Response.FromString(frame.data).status.code != 0
        client = await Client.connect_unix(listen)
        try:
            with pytest.raises(NotFound):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="c"), shim_pb2.StateResponse)
        finally:
            await client.close()
        assert proc.poll() is None
    finally:
        writer.close()


async def test_a_task_server_that_keeps_dying_at_connect_leaves_the_front_up(tmp_path) -> None:
    """A task server that accepts and dies at once, over and over (the front's first send after reconnecting
    may meet EPIPE, its first read EOF), costs the engine nothing: its call in flight is answered by the
    first task server that stays, and its connection stays open."""
    backend_path = str(tmp_path / "backend.sock")
    proc, listen, log = await start_front(tmp_path)
    client = await Client.connect_unix(listen)

    async def die_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()
    flapping = await asyncio.start_unix_server(die_at_once, backend_path)
    backends = Backends(backend_path, str(tmp_path / "journal"))
    try:
        call = asyncio.ensure_future(client.call(TASK, "Kill", shim_pb2.KillRequest(id="c", signal=9),
                                                 empty_pb2.Empty))
        await asyncio.sleep(0.5)
        flapping.close()
        await flapping.wait_closed()
        assert proc.poll() is None and not call.done()
        os.unlink(backend_path)
        await backends.start()
        await asyncio.wait_for(call, 10)
        assert backends.executed == ["kill 9"] and not client.closed
    finally:
        await client.close()
        if backends.server is not None:
            await backends.server.shutdown()
        stop(proc)
    text = Path(log).read_text()
    assert "task server connection lost; holding calls in flight until it is back" in text
    assert re.search(r"task server is back after \d+\.\d\d s; calls in flight sent again", text)


async def test_connections_beyond_the_soft_file_limit_are_served(tmp_path) -> None:
    """Each engine connection costs the front two descriptors; started with a soft limit of 64 files (systemd's
    default is 1024 against 1024 connections served), it raises it to the hard limit and answers 40."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 128:
        pytest.skip(f"the hard limit of open files is {hard}")
    backends = Backends(str(tmp_path / "backend.sock"), str(tmp_path / "journal"))
    await backends.start()
    proc, listen, _ = await start_front(
        tmp_path, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard)))
    clients: list[Client] = []
    try:
        clients = [await Client.connect_unix(listen) for _ in range(40)]
        answers = await asyncio.gather(*(c.call(TASK, "State", shim_pb2.StateRequest(id="c"), shim_pb2.StateResponse,
                                                timeout=10) for c in clients), return_exceptions=True)
        assert [type(a).__name__ for a in answers] == ["NotFound"] * 40
    finally:
        for c in clients:
            await c.close()
        stop(proc)
        assert backends.server is not None
        await backends.server.shutdown()


@pytest.mark.parametrize("argv, problem", [
    (["--listen", "/tmp/x.sock"], "--listen and --backend are required"),
    (["--listen", "/tmp/x.sock", "--backend"], "--backend needs a value"),
    (["--listen", "/tmp/x.sock", "--backend", "/tmp/y.sock", "--verbose", "1"], "unknown option '--verbose'"),
    (["--listen", "/tmp/x.sock", "--backend", "/tmp/y.sock", "--max-connections", "-1"],
     "--max-connections wants a non-negative integer, got '-1'"),
    (["--listen", "/tmp/x.sock", "--backend", "/tmp/y.sock", "--inflight-limit", "8M"],
     "--inflight-limit wants a non-negative integer, got '8M'"),
    (["--listen", "/tmp/" + "x" * 120, "--backend", "/tmp/y.sock"], "--listen wants a socket path of 1 to 107 bytes"),
])
def test_a_bad_command_line_is_refused_naming_what_was_wrong(argv: list[str], problem: str) -> None:
    proc = subprocess.run([FRONT, *argv], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2 and problem in proc.stderr and "usage: kuasar-taskfront" in proc.stderr


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
        assert status.message == f"message length exceeds maximum message size of {framing.MAX_MESSAGE}"
        writer.write(request(3, "State", shim_pb2.StateRequest(id="c")))  # the connection goes on
        frame = await asyncio.wait_for(framing.read_frame(reader), 10)
        assert frame.stream_id == 3 and request_pb2.Response.FromString(frame.data).status.code == 5  # NOT_FOUND
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
    backend_path = str(tmp_path / "backend.sock")
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
    proc, listen, _ = await start_front(tmp_path, "--inflight-limit", str(1 << 20))
    clients: list[Client] = []
    try:
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
        stop(proc)
        await server.shutdown()


