"""RuncSandboxer with real holders, a real runc-task process and real runc containers."""
from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.mounts import mountinfo
from kuasar_shared.daemon.reaper import get_reaper
from kuasar_shared.process_identity import start_time, wait_exit
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.testing.oci import read_fifo
from kuasar_shared.ttrpc import Client
from kuasar_runc_sandboxer.sandboxer import RuncSandboxer
from kuasar_runc_sandboxer.sandboxer import RUNC_TASK
from kuasar_shared.sandbox.task_supervisor import EXITS_DIR, TASK_SERVICE, TaskServer


def _pod(netns: str = "", hostname: str = "", pid_mode: str = "CONTAINER", network: str = "POD",
         cgroup_parent: str = "") -> CreateSandbox:
    options = {"network": network, "pid": pid_mode}
    linux = {"security_context": {"namespace_options": options}}
    if cgroup_parent:
        linux["cgroup_parent"] = cgroup_parent
    return CreateSandbox(id="pod-" + uuid.uuid4().hex[:10], netns_path=netns,
                         config={"hostname": hostname, "linux": linux})


def _mounts_under(path: str) -> list[str]:
    return [m.mountpoint for m in mountinfo() if m.mountpoint.startswith(path)]


@pytest.mark.asyncio
async def test_two_containers_share_pod_net_ipc_uts(sandboxer: RuncSandboxer, netns: str, container_bundle,
                                                    fifo, run_container) -> None:
    req = _pod(netns=netns, hostname="shared-host")
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    assert status.ready and status.pid > 0 and status.address == sandboxer.task_server.address
    holder_ns = {t: os.readlink(f"/proc/{status.pid}/ns/{t}") for t in ("net", "ipc", "uts")}
    assert holder_ns["net"] != os.readlink("/proc/self/ns/net")
    script = "hostname; readlink /proc/self/ns/net; readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts"
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    outputs = []
    try:
        for name in ("c1", "c2"):
            out = fifo(name)
            reader = asyncio.ensure_future(read_fifo(out))
            cid = f"{req.id}-{name}"
            # the second container uses the pid-0 form, rewritten to the pinned namespaces
            bundle = container_bundle(req.id, status.pid if name == "c1" else 0, ["sh", "-c", script])
            await run_container(client, cid, bundle, out)
            outputs.append((await reader).decode().split())
            waited = await client.call(TASK_SERVICE, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse)
            assert waited.exit_status == 0
            await client.call(TASK_SERVICE, "Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
    finally:
        await client.close()
    assert outputs[0] == outputs[1]
    assert outputs[0] == ["shared-host", holder_ns["net"], holder_ns["ipc"], holder_ns["uts"]]


@pytest.mark.asyncio
async def test_host_network_pod(sandboxer: RuncSandboxer, container_bundle, fifo, run_container) -> None:
    req = _pod(network="NODE")
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    assert os.readlink(f"/proc/{status.pid}/ns/net") == os.readlink("/proc/self/ns/net")
    assert os.readlink(f"/proc/{status.pid}/ns/uts") != os.readlink("/proc/self/ns/uts")
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    try:
        out = fifo("hostnet")
        reader = asyncio.ensure_future(read_fifo(out))
        await run_container(client, f"{req.id}-c",
                            container_bundle(req.id, status.pid, ["readlink", "/proc/self/ns/net"]), out)
        assert (await reader).decode().strip() == os.readlink("/proc/self/ns/net")
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_shared_pid_pod_sees_other_containers(sandboxer: RuncSandboxer, netns: str, container_bundle,
                                                    fifo, run_container) -> None:
    req = _pod(netns=netns, pid_mode="POD")
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    try:
        sleeper = container_bundle(req.id, status.pid, ["sleep", "1000"], pid_ns=True)
        await run_container(client, f"{req.id}-sleeper", sleeper, "")
        out = fifo("ps")
        reader = asyncio.ensure_future(read_fifo(out))
        await run_container(client, f"{req.id}-ps", container_bundle(req.id, 0, ["ps", "-o", "pid,args"], pid_ns=True),
                            out)
        lines = (await reader).decode().splitlines()
        assert any(line.split()[0] == "1" for line in lines[1:]), lines
        assert any("sleep 1000" in line for line in lines), lines
        # stopping the pod kills the containers left in it
        await sandboxer.stop(req.id, None)
        state = await client.call(TASK_SERVICE, "State", shim_pb2.StateRequest(id=f"{req.id}-sleeper"),
                                  shim_pb2.StateResponse)
        assert state.status == 3  # STOPPED
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_stop_and_shutdown_leave_nothing(sandboxer: RuncSandboxer, netns: str, container_bundle,
                                               run_container) -> None:
    cgroup_parent = "/kuasar-test-" + uuid.uuid4().hex[:8]
    never_started = _pod(netns=netns)
    await sandboxer.create(never_started)
    await sandboxer.stop(never_started.id, None)
    with pytest.raises(FailedPrecondition):
        await sandboxer.start(never_started.id)
    req = _pod(netns=netns, cgroup_parent=cgroup_parent)
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    pod_dir = os.path.join(sandboxer.directory, req.id)
    assert len(_mounts_under(pod_dir)) == 4  # ns/{uts,ipc,net} and the pod's /dev/shm
    assert os.path.isdir("/sys/fs/cgroup/memory" + cgroup_parent)
    metrics = await sandboxer.metrics(req.id)
    assert metrics is not None
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    try:
        cid = f"{req.id}-c"
        await run_container(client, cid, container_bundle(req.id, status.pid, ["sleep", "1000"]), "")
        container_pid = (await client.call(TASK_SERVICE, "State", shim_pb2.StateRequest(id=cid),
                                           shim_pb2.StateResponse)).pid
        # the spec had no cgroupsPath: runc-task put the container below the pod's cgroup parent
        with open(f"/sys/fs/cgroup/memory{cgroup_parent}/{cid}/cgroup.procs") as handle:
            assert str(container_pid) in handle.read().split()
        waiter = asyncio.ensure_future(sandboxer.wait(req.id))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await sandboxer.stop(req.id, None)
        exit_status = await asyncio.wait_for(waiter, 10)
        assert exit_status.exited_at is not None
        assert not (await sandboxer.status(req.id)).ready
        assert start_time(status.pid) is None and start_time(container_pid) is None
        await sandboxer.shutdown(req.id)
        with pytest.raises(NotFound):
            await client.call(TASK_SERVICE, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)
    finally:
        await client.close()
    with pytest.raises(NotFound):
        await sandboxer.status(req.id)
    assert not os.path.exists(pod_dir)
    assert _mounts_under(pod_dir) == []
    for hierarchy in os.listdir("/sys/fs/cgroup"):
        assert not os.path.exists(f"/sys/fs/cgroup/{hierarchy}{cgroup_parent}"), hierarchy


@pytest.mark.asyncio
async def test_holder_death_ends_wait(sandboxer: RuncSandboxer) -> None:
    req = _pod()
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    waiter = asyncio.ensure_future(sandboxer.wait(req.id))
    os.kill(status.pid, signal.SIGKILL)
    result = await asyncio.wait_for(waiter, 10)
    assert result.exit_status == 255
    assert not (await sandboxer.status(req.id)).ready


@pytest.mark.asyncio
async def test_bad_netns_is_invalid_argument(sandboxer: RuncSandboxer, tmp_path) -> None:
    with pytest.raises(InvalidArgument):
        await sandboxer.create(_pod(netns=str(tmp_path / "missing")))
    not_a_netns = tmp_path / "plain-file"
    not_a_netns.write_text("x")
    req = _pod(netns=str(not_a_netns))
    await sandboxer.create(req)
    with pytest.raises(InvalidArgument, match="setns"):
        await sandboxer.start(req.id)
    assert not (await sandboxer.status(req.id)).ready


@pytest.mark.asyncio
async def test_restart_recovers_ready_pods_and_cleans_unrecoverable(holders, task_server: TaskServer,
                                                                     netns: str) -> None:
    first = RuncSandboxer(task_server.directory, holders, task_server)
    await first.recover()
    alive, dead = _pod(netns=netns), _pod()
    for req in (alive, dead):
        await first.create(req)
        await first.start(req.id)
    dead_pid = (await first.status(dead.id)).pid
    for watch in first._watches.values():
        watch.cancel()
    os.kill(dead_pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(dead_pid), 10)
    corrupt = os.path.join(task_server.directory, "corrupt-pod")
    os.makedirs(corrupt)
    with open(os.path.join(corrupt, "sandbox.json"), "w") as handle:
        handle.write("{torn")

    second = RuncSandboxer(task_server.directory, holders, task_server)
    await second.recover()
    try:
        assert (await second.status(alive.id)).ready
        for gone in (dead.id, "corrupt-pod"):
            with pytest.raises(NotFound):
                await second.status(gone)
            assert not os.path.exists(os.path.join(task_server.directory, gone))
        assert _mounts_under(os.path.join(task_server.directory, dead.id)) == []
    finally:
        await second.shutdown(alive.id)
        for watch in second._watches.values():
            watch.cancel()


@pytest.mark.asyncio
async def test_task_server_kill_9_readopts_containers(sandboxer: RuncSandboxer, container_bundle, run_container,
                                                      stop_pid) -> None:
    req = _pod()
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    # the test process is the subreaper the orphaned containers re-parent to, as runc-sandboxer is
    recorder = ExitRecorder(os.path.join(sandboxer.directory, EXITS_DIR))
    listener = recorder.listener(lambda pid: False)
    get_reaper().add_listener(listener)
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    script = "while [ ! -e /tmp/go ]; do sleep 0.05; done; exit 42"
    bundles = {name: container_bundle(req.id, status.pid, ["sh", "-c", script], net=False)
               for name in ("exits", "killed")}
    pids = {name: await run_container(client, f"{req.id}-{name}", bundle, "") for name, bundle in bundles.items()}
    await client.close()
    old = sandboxer.task_server
    await old.close()
    os.kill(old.pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(old.pid), 10)
    new = await TaskServer.ensure(old.directory, RUNC_TASK)
    assert new.pid != old.pid
    sandboxer.task_server = new
    client = await Client.connect_unix(new.socket_path)
    try:
        waiters = {}
        for name, pid in pids.items():
            cid = f"{req.id}-{name}"
            state = await client.call(TASK_SERVICE, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)
            assert state.status == 2 and state.pid == pid  # RUNNING, the same process
            waiters[name] = asyncio.ensure_future(client.call(TASK_SERVICE, "Wait", shim_pb2.WaitRequest(id=cid),
                                                              shim_pb2.WaitResponse))
        await client.call(TASK_SERVICE, "Kill", shim_pb2.KillRequest(id=f"{req.id}-killed", signal=9),
                          empty_pb2.Empty)
        open(os.path.join(bundles["exits"], "rootfs", "tmp", "go"), "w").close()
        exited = await asyncio.wait_for(waiters["exits"], 10)
        killed = await asyncio.wait_for(waiters["killed"], 10)
        assert exited.exit_status == 42 and exited.HasField("exited_at")
        assert killed.exit_status == 137 and killed.HasField("exited_at")
    finally:
        get_reaper().remove_listener(listener)
        await client.close()
        await sandboxer.shutdown(req.id)
        await new.close()
        stop_pid(new.pid)
