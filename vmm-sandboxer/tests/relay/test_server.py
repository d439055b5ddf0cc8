"""The relay against a fake guest agent (mux + ttrpc over a unix socket standing in for agent.sock):
forwarding, Create/Exec preparation, FIFO bridging, Delete clean-up, bad input, detach and guest loss."""
from __future__ import annotations

import asyncio
import json
import os

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import InvalidArgument, NotFound, Unavailable
from kuasar_shared.io import StreamingHub, stream_id_of
from kuasar_shared.ttrpc import Client, Server, Service
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_sandboxer.relay.control import RelayControl
from kuasar_vmm_sandboxer.relay.server import Relay

TASK = "containerd.task.v3.Task"


class FakeGuest:
    """What vmm-task serves, reduced: Task Create/Exec/Delete recorded, Streaming from a hub."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.hub = StreamingHub()
        self.requests: list = []
        task = Service(TASK)
        task.unary("Create", shim_pb2.CreateTaskRequest, self.create)
        task.unary("Exec", shim_pb2.ExecProcessRequest, self.exec)
        task.unary("Delete", shim_pb2.DeleteRequest, self.delete)
        self.server = Server([task, self.hub.service()])
        self.muxes: list = []
        #: what the container "prints" on stdout after Create, one chunk per ``output_interval`` seconds
        self.output = [b"hello from the guest\n"]
        self.output_interval = 0.0
        self._writers: list = []

    async def start(self) -> None:
        self.listener = await asyncio.start_unix_server(self.accept, self.path)

    async def accept(self, reader, writer) -> None:
        mux = MuxConnection(reader, writer, is_host=False)
        self.muxes.append(mux)
        await mux.serve(self.server.serve_connection)

    async def create(self, ctx, req):
        self.requests.append(req)
        sid = stream_id_of(req.stdout)
        if sid:
            self._writers.append(asyncio.ensure_future(self._print(self.hub.endpoint(sid))))
        return shim_pb2.CreateTaskResponse(pid=42)

    async def _print(self, ep) -> None:
        for chunk in self.output:
            await ep.put(chunk)
            await asyncio.sleep(self.output_interval)
        await ep.put(None)

    async def exec(self, ctx, req):
        self.requests.append(req)
        return empty_pb2.Empty()

    async def delete(self, ctx, req):
        return shim_pb2.DeleteResponse(pid=42)

    async def close(self) -> None:
        for writer in self._writers:
            writer.cancel()
        self.listener.close()
        for mux in self.muxes:
            await mux.close()


@pytest.fixture
async def relay_env(short_tmp):
    pods = os.path.join(short_tmp, "pods")
    pod_dir = os.path.join(pods, "p1")
    os.makedirs(pod_dir)
    guest = FakeGuest(os.path.join(pod_dir, "agent.sock"))
    await guest.start()
    relay = Relay(pods, os.path.join(pods, ".tasks"))
    server = Server(relay.services())
    await server.listen_unix(os.path.join(pods, "task.sock"))
    control = RelayControl(os.path.join(pods, "task.sock"))
    await control.attach("p1")
    yield {"dir": short_tmp, "pod_dir": pod_dir, "guest": guest, "relay": relay, "control": control}
    await server.shutdown()
    await relay.close()
    await guest.close()


def _host_bundle(root: str) -> str:
    bundle = os.path.join(root, "bundle")
    os.makedirs(os.path.join(bundle, "rootfs", "bin"))
    with open(os.path.join(bundle, "config.json"), "w") as f:
        json.dump({"root": {"path": "rootfs"}, "process": {"args": ["true"]},
                   "linux": {"namespaces": [{"type": "network", "path": "/proc/1/ns/net"}]}}, f)
    return bundle


class FifoReader:
    """The engine's end of a stdout FIFO: non-blocking reads collected in :attr:`out`."""

    def __init__(self, directory: str) -> None:
        self.path = os.path.join(directory, "stdout")
        os.mkfifo(self.path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        self.out = b""

    async def lines(self, count: int) -> bytes:
        """Read until ``count`` lines arrived (or ~6 s passed); everything read so far."""
        for _ in range(300):
            try:
                self.out += os.read(self.fd, 1000)
            except BlockingIOError:
                pass
            if self.out.count(b"\n") >= count:
                break
            await asyncio.sleep(0.02)
        return self.out

    def close(self) -> None:
        os.close(self.fd)


async def test_create_prepares_bridges_and_delete_cleans(relay_env):
    env = relay_env
    reader = FifoReader(env["dir"])
    fifo = reader.path
    engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
    try:
        req = shim_pb2.CreateTaskRequest(id="c1", bundle=_host_bundle(env["dir"]), stdout=fifo)
        resp = await engine.call(TASK, "Create", req, shim_pb2.CreateTaskResponse, timeout=10)
        assert resp.pid == 42
        seen = env["guest"].requests[0]
        assert seen.bundle == "/run/kuasar/state/c1" and not seen.rootfs
        assert stream_id_of(seen.stdout) == "c1-stdout"
        prepared = os.path.join(env["pod_dir"], "shared", "c1")
        with open(os.path.join(prepared, "config.json")) as f:
            assert json.load(f)["linux"]["namespaces"] == []
        assert await reader.lines(1) == b"hello from the guest\n"
        await engine.call(TASK, "Exec", shim_pb2.ExecProcessRequest(id="c1", exec_id="e1", stdout=fifo),
                          empty_pb2.Empty, timeout=10)
        assert stream_id_of(env["guest"].requests[1].stdout) == "c1-e1-stdout"
        await engine.call(TASK, "Delete", shim_pb2.DeleteRequest(id="c1"), shim_pb2.DeleteResponse, timeout=10)
        for _ in range(50):
            if not os.path.exists(prepared):
                break
            await asyncio.sleep(0.02)
        assert not os.path.exists(prepared)
    finally:
        reader.close()
        await engine.close()


async def test_fifo_bridge_keeps_copying_while_the_reader_lags(relay_env):
    """Output keeps flowing into the FIFO chunk after chunk, also while earlier chunks are still unread
    (an asyncio write-pipe transport on the O_RDWR FIFO stopped after the first)."""
    env = relay_env
    env["guest"].output = [b"line %d\n" % n for n in range(5)]
    env["guest"].output_interval = 0.1
    reader = FifoReader(env["dir"])
    engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
    try:
        req = shim_pb2.CreateTaskRequest(id="c1", bundle=_host_bundle(env["dir"]), stdout=reader.path)
        await engine.call(TASK, "Create", req, shim_pb2.CreateTaskResponse, timeout=10)
        await asyncio.sleep(0.35)  # a few chunks wait in the FIFO before anything reads them
        assert await reader.lines(5) == b"".join(env["guest"].output)
    finally:
        reader.close()
        await engine.close()


async def test_bad_input_is_answered_by_the_relay(relay_env):
    env = relay_env
    engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
    try:
        with pytest.raises(InvalidArgument, match="config.json"):
            await engine.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="c2", bundle="/nonexistent"),
                              shim_pb2.CreateTaskResponse, timeout=10)
        with pytest.raises(InvalidArgument):
            await engine.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="../x", bundle="/"),
                              shim_pb2.CreateTaskResponse, timeout=10)
        with pytest.raises(InvalidArgument, match="FIFO"):
            await engine.call(TASK, "Exec", shim_pb2.ExecProcessRequest(id="c2", exec_id="e", stdout="/etc/hosts"),
                              empty_pb2.Empty, timeout=10)
        assert env["guest"].requests == []
        assert not os.path.exists(os.path.join(env["pod_dir"], "shared", "c2"))
        # the connection still works after the errors
        await engine.call(TASK, "Delete", shim_pb2.DeleteRequest(id="c2"), shim_pb2.DeleteResponse, timeout=10)
    finally:
        await engine.close()


async def test_detach_and_guest_loss(relay_env):
    env = relay_env
    engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
    await engine.call(TASK, "Delete", shim_pb2.DeleteRequest(id="c3"), shim_pb2.DeleteResponse, timeout=10)
    await env["guest"].close()
    with pytest.raises(Unavailable):
        await engine.call(TASK, "Delete", shim_pb2.DeleteRequest(id="c3"), shim_pb2.DeleteResponse, timeout=10)
    await engine.close()
    await env["control"].detach("p1")
    await env["control"].detach("p1")  # idempotent
    assert not os.path.exists(os.path.join(env["pod_dir"], "task.sock"))
    with pytest.raises(NotFound):
        await env["relay"].detach("p1")
    with pytest.raises(Unavailable):
        await env["control"].attach("p1")  # the agent socket is gone


async def test_detach_with_an_open_engine_connection_logs_no_error(relay_env, caplog):
    env = relay_env
    engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
    await engine.call(TASK, "Delete", shim_pb2.DeleteRequest(id="c4"), shim_pb2.DeleteResponse, timeout=10)
    with caplog.at_level("ERROR"):
        await env["control"].detach("p1")
        await asyncio.sleep(0.1)  # the stream server's done-callbacks run
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    await engine.close()


async def test_recover_reattaches_recorded_pods(relay_env):
    env = relay_env
    pods = os.path.dirname(env["pod_dir"])
    again = Relay(pods, os.path.join(pods, ".tasks"))
    await env["relay"].close()
    await again.recover()
    try:
        assert list(again.links) == ["p1"]
        engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
        await engine.call(TASK, "Delete", shim_pb2.DeleteRequest(id="c4"), shim_pb2.DeleteResponse, timeout=10)
        await engine.close()
    finally:
        await again.close()


async def test_recovered_relay_resumes_fifo_output_of_running_containers(relay_env):
    """The relay goes away while a container keeps printing: the next relay re-opens the recorded
    bridge and the FIFO gets the rest of the output (what the guest buffered meanwhile included)."""
    env = relay_env
    env["guest"].output = [b"line %d\n" % n for n in range(12)]
    env["guest"].output_interval = 0.05
    reader = FifoReader(env["dir"])
    fifo = reader.path
    pods = os.path.dirname(env["pod_dir"])
    engine = await Client.connect_unix(os.path.join(env["pod_dir"], "task.sock"))
    stdin = os.path.join(env["dir"], "stdin")
    os.mkfifo(stdin)
    try:
        req = shim_pb2.CreateTaskRequest(id="c1", bundle=_host_bundle(env["dir"]), stdout=fifo, stdin=stdin)
        await engine.call(TASK, "Create", req, shim_pb2.CreateTaskResponse, timeout=10)
        await reader.lines(2)
        await engine.close()
        await env["relay"].close()  # the record keeps the running output bridge (stdin is not resumed)
        with open(os.path.join(pods, ".tasks", "p1.json")) as f:
            assert json.load(f)["bridges"] == [{"cid": "c1", "exec_id": "", "which": "stdout", "path": fifo}]
        again = Relay(pods, os.path.join(pods, ".tasks"))
        await again.recover()
        try:
            assert await reader.lines(12) == b"".join(env["guest"].output)
            for _ in range(100):  # the output ended: its bridge is no longer recorded
                with open(os.path.join(pods, ".tasks", "p1.json")) as f:
                    if json.load(f)["bridges"] == []:
                        break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("finished bridge still recorded")
        finally:
            await again.close()
    finally:
        reader.close()



class HvsockGuest:
    """FakeGuest's services behind a Cloud Hypervisor style hybrid vsock socket: ``CONNECT <port>\\n``,
    ``OK <n>\\n`` from the guest's port 1024, then plain ttrpc; any other port is closed at once."""

    def __init__(self, path: str) -> None:
        self.guest = FakeGuest(path)
        self.ports: list = []

    async def start(self) -> None:
        self.listener = await asyncio.start_unix_server(self.accept, self.guest.path)

    async def accept(self, reader, writer) -> None:
        port = (await reader.readline()).decode().split()[1]
        self.ports.append(port)
        if port != "1024":
            writer.close()
            return
        writer.write(b"OK 1073741824\n")
        await self.guest.server.serve_connection(reader, writer)

    async def close(self) -> None:
        self.listener.close()


async def test_hybrid_vsock_agent(short_tmp):
    """A pod attached with an hvsock agent address: one guest connection per engine connection, recorded
    with the address so a restarted relay reaches the guest the same way."""
    pods = os.path.join(short_tmp, "pods")
    pod_dir = os.path.join(pods, "p2")
    os.makedirs(pod_dir)
    guest = HvsockGuest(os.path.join(pod_dir, "task.vsock"))
    await guest.start()
    relay = Relay(pods, os.path.join(pods, ".tasks"))
    server = Server(relay.services())
    await server.listen_unix(os.path.join(pods, "task.sock"))
    control = RelayControl(os.path.join(pods, "task.sock"))
    address = "hvsock://%s:1024" % guest.guest.path
    try:
        with pytest.raises(InvalidArgument):
            await control.attach("p2", "vsock://3:1024")
        with pytest.raises(InvalidArgument, match="not in the pod directory"):
            await control.attach("p2", "hvsock://%s:1024" % os.path.join(short_tmp, "elsewhere.sock"))
        await control.attach("p2", address)
        for n in range(2):
            engine = await Client.connect_unix(os.path.join(pod_dir, "task.sock"))
            await engine.call(TASK, "Exec", shim_pb2.ExecProcessRequest(id="c1", exec_id="e%d" % n),
                              empty_pb2.Empty, timeout=10)
            await engine.close()
        assert guest.ports == ["1024", "1024"]
        with open(os.path.join(pods, ".tasks", "p2.json")) as f:
            assert json.load(f)["agent"] == address
        await relay.close()
        relay = Relay(pods, os.path.join(pods, ".tasks"))
        await relay.recover()
        assert relay.links["p2"].hvsock == (guest.guest.path, 1024)
    finally:
        await server.shutdown()
        await relay.close()
        await guest.close()
