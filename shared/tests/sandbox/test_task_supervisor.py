"""Starting, re-adopting and supervising a task server process (and its front), with the toy task server
of tests/task (the shared task server over a backend that runs nothing)."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Callable

import pytest

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.process_identity import start_time, wait_exit
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE, TaskServer
from kuasar_shared.ttrpc import Client

TOY_TASK = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "task",
                                         "toy_task_server.py")]


def _stop_pid(pid: int) -> None:
    """SIGKILL one process we started (by pid) if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def stop_pid() -> Callable[[int], None]:
    """``stop_pid(pid)``: SIGKILL a process the test started."""
    return _stop_pid


@pytest.mark.asyncio
async def test_ensure_readopts_a_live_server_and_replaces_a_dead_one(tmp_path, stop_pid) -> None:
    directory = str(tmp_path)
    first = await TaskServer.ensure(directory, TOY_TASK)
    try:
        assert first.address == "ttrpc+unix://" + os.path.join(directory, "task.sock")
        assert await first.ping()
        again = await TaskServer.ensure(directory, TOY_TASK)
        assert again.pid == first.pid
        await again.close()
        os.kill(first.pid, signal.SIGKILL)
        await asyncio.wait_for(wait_exit(first.pid), 10)
        replaced = await TaskServer.ensure(directory, TOY_TASK)
        assert replaced.pid != first.pid and await replaced.ping()
        with open(os.path.join(directory, "task-server.json")) as handle:
            assert json.load(handle)["pid"] == replaced.pid
        await replaced.close()
        stop_pid(replaced.pid)
    finally:
        await first.close()
        stop_pid(first.pid)


@pytest.mark.asyncio
async def test_supervise_restarts_a_killed_server_on_the_same_socket(tmp_path, stop_pid) -> None:
    server = await TaskServer.ensure(str(tmp_path), TOY_TASK)
    old_pid, address = server.pid, server.address
    server.supervise()
    try:
        os.kill(old_pid, signal.SIGKILL)
        for _ in range(200):
            if server.pid != old_pid and await server.ping():
                break
            await asyncio.sleep(0.05)
        assert server.pid != old_pid and start_time(server.pid) is not None
        assert server.address == address
    finally:
        await server.close()
        stop_pid(server.pid)
    await asyncio.wait_for(wait_exit(server.pid), 10)


@pytest.mark.asyncio
async def test_corrupt_record_starts_a_new_server(tmp_path, stop_pid) -> None:
    (tmp_path / "task-server.json").write_text("{torn")
    server = await TaskServer.ensure(str(tmp_path), TOY_TASK)
    try:
        assert await server.ping()
    finally:
        await server.close()
        stop_pid(server.pid)


@pytest.mark.asyncio
async def test_front_is_readopted_and_restarted_on_the_engine_socket(tmp_path, stop_pid) -> None:
    directory = str(tmp_path)
    server = await TaskServer.ensure(directory, TOY_TASK, front=True)
    pids = [server.pid, server.front_pid]
    try:
        assert server.address == "ttrpc+unix://" + os.path.join(directory, "task.sock")
        assert server.backend_path == os.path.join(directory, "task-backend.sock")
        with open(os.path.join(directory, "task-server.json")) as handle:
            assert json.load(handle)["front"]["pid"] == server.front_pid
        again = await TaskServer.ensure(directory, TOY_TASK, front=True)
        assert (again.pid, again.front_pid) == (server.pid, server.front_pid)
        await again.close()

        server.supervise()
        old_front = server.front_pid
        os.kill(old_front, signal.SIGKILL)
        for _ in range(200):
            if server.front_pid != old_front and os.path.exists(os.path.join(directory, "task.sock")):
                break
            await asyncio.sleep(0.05)
        pids.append(server.front_pid)
        assert server.front_pid != old_front and start_time(server.front_pid) is not None
        with open(os.path.join(directory, "task-server.json")) as handle:
            assert json.load(handle)["front"]["pid"] == server.front_pid
    finally:
        await server.close()
        for pid in pids:
            stop_pid(pid)


@pytest.mark.asyncio
async def test_a_server_without_front_is_replaced_once_by_a_front_and_a_server(tmp_path, stop_pid) -> None:
    """The first start after an upgrade from a version without a front: the old server is stopped (it
    held the engine's socket) and a front and a new server take its place."""
    directory = str(tmp_path)
    legacy = await TaskServer.ensure(directory, TOY_TASK)
    await legacy.close()
    server = await TaskServer.ensure(directory, TOY_TASK, front=True)
    try:
        assert start_time(legacy.pid) is None
        assert server.pid != legacy.pid and server.front_pid and await server.ping()
    finally:
        await server.close()
        stop_pid(server.pid)
        stop_pid(server.front_pid)
        stop_pid(legacy.pid)


@pytest.mark.asyncio
async def test_every_pod_of_a_full_node_gets_its_own_task_connection(tmp_path, stop_pid) -> None:
    """containerd 2.x holds one task connection per pod: 300 at once (beyond the kubelet's default 110 pods)
    are all answered through the front and the server; the front used to refuse the 65th."""
    server = await TaskServer.ensure(str(tmp_path), TOY_TASK, front=True)
    clients: list[Client] = []
    try:
        path = os.path.join(str(tmp_path), "task.sock")
        for _ in range(300):
            clients.append(await Client.connect_unix(path, timeout=5.0))

        async def connect(client: Client) -> object:
            return await client.call(TASK_SERVICE, "Connect", shim_pb2.ConnectRequest(id=""),
                                     shim_pb2.ConnectResponse, timeout=30.0)

        answers = await asyncio.gather(*(connect(c) for c in clients), return_exceptions=True)
        # the toy server answers an empty id with InvalidArgument; a refused connection or a deadline is no answer
        assert [type(a).__name__ for a in answers] == ["InvalidArgument"] * len(clients)
    finally:
        for client in clients:
            await client.close()
        await server.close()
        stop_pid(server.pid)
        stop_pid(server.front_pid)
