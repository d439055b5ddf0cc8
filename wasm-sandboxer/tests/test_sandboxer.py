"""WasmSandboxer with a real wasm-task process: pod lifecycle and cgroups, restart of the sandboxer
and of the task server with a running module, clean-up of unreadable records, no leftovers."""
from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.cgroups.v1 import metrics_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.cgroups import Cgroup
from kuasar_shared.errors import FailedPrecondition, NotFound
from kuasar_shared.process_identity import wait_exit
from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE, TaskServer
from kuasar_shared.testing.oci import read_fifo
from kuasar_shared.ttrpc import Client

from kuasar_wasm_sandboxer.forkserver import NAME as FORKSERVER_NAME
from kuasar_wasm_sandboxer.sandboxer import DEFAULT_CGROUP_ROOT, WASM_TASK, WasmSandboxer
from wasm_helpers import cgroup_exists, processes_mentioning


async def _forkserver_of(task_pid: int) -> int:
    """The pid of the fork-server the task server ``task_pid`` started (waits until it exists)."""
    while True:
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    stat = handle.read()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            # runners re-parent to the task server too: they are named wasm-runner
            if ppid == task_pid and f"({FORKSERVER_NAME})" in stat:
                return int(entry)
        await asyncio.sleep(0.05)


def _pod(cgroup_parent: str = "") -> CreateSandbox:
    linux = {"cgroup_parent": cgroup_parent} if cgroup_parent else {}
    return CreateSandbox(id="pod-" + uuid.uuid4().hex[:10], config={"linux": linux})


@pytest.fixture
async def task_server(tmp_path):
    directory = str(tmp_path / "wasm")
    os.makedirs(directory)
    server = await TaskServer.ensure(directory, WASM_TASK)
    yield server
    await server.close()
    os.kill(server.pid, signal.SIGTERM)
    await wait_exit(server.pid)
    assert processes_mentioning(directory) == []


@pytest.fixture
async def sandboxer(task_server):
    wasm = WasmSandboxer(task_server.directory, task_server)
    await wasm.recover()
    yield wasm
    for sandbox_id in [pod.id for pod in wasm.pods]:
        await wasm.shutdown(sandbox_id)


async def _task(client: Client, method: str, request, response):
    return await client.call(TASK_SERVICE, method, request, response, timeout=30)


async def test_pod_lifecycle_and_cgroup(sandboxer: WasmSandboxer, bundle_factory, fifo) -> None:
    req = _pod()
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    assert status.ready and status.pid == sandboxer.task_server.pid
    assert status.address == sandboxer.task_server.address
    cgroup = f"{DEFAULT_CGROUP_ROOT}/{req.id}"
    assert cgroup_exists(cgroup)
    with pytest.raises(FailedPrecondition):
        await sandboxer.start(req.id)
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    try:
        out = fifo("out")
        reader = asyncio.ensure_future(read_fifo(out))
        cid = req.id + "-c"
        await _task(client, "Create", shim_pb2.CreateTaskRequest(
            id=cid, bundle=bundle_factory(["/bin/hello.wat"], sandbox_id=req.id), stdout=out),
            shim_pb2.CreateTaskResponse)
        assert cgroup_exists(f"{cgroup}/{cid}")
        await _task(client, "Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse)
        assert await reader == b"hello from wat\n"
        waited = await _task(client, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse)
        assert waited.exit_status == 0
        metrics = await sandboxer.metrics(req.id)
        assert metrics is not None
        loop_id = req.id + "-loop"
        await _task(client, "Create", shim_pb2.CreateTaskRequest(
            id=loop_id, bundle=bundle_factory(["/bin/loop.wat"], sandbox_id=req.id)), shim_pb2.CreateTaskResponse)
        created = await _task(client, "Start", shim_pb2.StartRequest(id=loop_id), shim_pb2.StartResponse)
        # Task Stats of a wasm container over the Task API: its cgroup's numbers (upstream: Unimplemented)
        stats = await _task(client, "Stats", shim_pb2.StatsRequest(id=loop_id), shim_pb2.StatsResponse)
        assert stats.stats.type_url.endswith("io.containerd.cgroups.v1.Metrics")
        decoded = metrics_pb2.Metrics.FromString(stats.stats.value)
        assert decoded.pids.current >= 1 and decoded.memory.usage.usage > 0
        assert created.pid in Cgroup.open(f"{cgroup}/{loop_id}").pids()
    finally:
        await client.close()
    waiter = asyncio.ensure_future(sandboxer.wait(req.id))
    await sandboxer.stop(req.id, None)
    assert (await asyncio.wait_for(waiter, 10)).exit_status == 0
    assert not (await sandboxer.status(req.id)).ready
    await sandboxer.shutdown(req.id)
    with pytest.raises(NotFound):
        await sandboxer.status(req.id)
    assert not cgroup_exists(cgroup) and not os.path.exists(sandboxer.pods.pod_dir(req.id))
    assert not cgroup_exists(DEFAULT_CGROUP_ROOT)


async def test_sandboxer_and_task_server_restart_keep_a_running_module(task_server, bundle_factory,
                                                                       fifo) -> None:
    first = WasmSandboxer(task_server.directory, task_server)
    req = _pod(cgroup_parent=f"/kuasar-wasm-test-{uuid.uuid4().hex[:8]}")
    await first.create(req)
    await first.start(req.id)
    cid = req.id + "-loop"
    client = await Client.connect_unix(task_server.socket_path)
    created = await _task(client, "Create", shim_pb2.CreateTaskRequest(
        id=cid, bundle=bundle_factory(["/bin/loop.wat"], sandbox_id=req.id)), shim_pb2.CreateTaskResponse)
    await _task(client, "Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse)
    await client.close()
    await first.close()  # the sandboxer goes away (the task server and the module stay)

    again = await TaskServer.ensure(task_server.directory, WASM_TASK)
    assert again.pid == task_server.pid
    second = WasmSandboxer(task_server.directory, again)
    await second.recover()
    assert (await second.status(req.id)).ready
    # the task server dies: a supervised new one re-adopts the module on the same socket
    again.supervise()
    old_pid = again.pid
    old_forkserver = await asyncio.wait_for(_forkserver_of(old_pid), 30)
    os.kill(old_pid, signal.SIGKILL)
    await wait_exit(old_pid)
    await asyncio.wait_for(wait_exit(old_forkserver), 30)  # its control socket closed with the old server
    for _ in range(200):
        if again.pid != old_pid and await again.ping():
            break
        await asyncio.sleep(0.05)
    assert again.pid != old_pid
    task_server.pid = again.pid  # the fixture stops the current server
    client = await Client.connect_unix(again.socket_path)
    try:
        state = await _task(client, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)
        assert state.status == 2 and state.pid == created.pid  # RUNNING, same runner
        assert await asyncio.wait_for(_forkserver_of(again.pid), 30) != old_forkserver  # a new one started
        await _task(client, "Kill", shim_pb2.KillRequest(id=cid, signal=signal.SIGTERM), empty_pb2.Empty)
        waited = await _task(client, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse)
        assert waited.exit_status == 128 + signal.SIGTERM
    finally:
        await client.close()
    await second.shutdown(req.id)
    assert not cgroup_exists(req.cgroup_parent)
    await second.close()


async def test_unreadable_record_is_cleaned_up(task_server) -> None:
    first = WasmSandboxer(task_server.directory, task_server)
    req = _pod()
    await first.create(req)
    await first.start(req.id)
    with open(os.path.join(first.pods.pod_dir(req.id), "sandbox.json"), "w") as handle:
        handle.write("{torn")
    second = WasmSandboxer(task_server.directory, task_server)
    await second.recover()
    with pytest.raises(NotFound):
        await second.status(req.id)
    assert not os.path.exists(second.pods.pod_dir(req.id))
    assert not cgroup_exists(f"{DEFAULT_CGROUP_ROOT}/{req.id}")
