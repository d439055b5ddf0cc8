"""What Kubernetes' CRI validation suite (critest) expects of a runc pod, without containerd.

Each test drives a real pod (RuncSandboxer: Create, Start, ..., Shutdown) and its real runc
containers over the Task API (ttrpc to the runc-task process) in the order containerd's CRI uses,
with container specs shaped like the ones containerd writes for such a pod.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any, Callable

import pytest
from google.protobuf import any_pb2, empty_pb2

from kuasar_shared.api.cgroups.v1 import metrics_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.process_identity import start_time
from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.testing.oci import read_fifo
from kuasar_shared.ttrpc import Client
from kuasar_runc_sandboxer.sandboxer import RuncSandboxer
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE

META = {"containerd-namespace-ttrpc": "k8s.io"}


def _pod(netns: str = "", pid: str = "POD", ipc: str = "POD", network: str = "POD", **config: Any) -> CreateSandbox:
    """A CreateSandbox whose PodSandboxConfig is rendered as the controller renders it."""
    linux = dict(config.pop("linux", {}))
    linux["security_context"] = {"namespace_options": {"network": network, "pid": pid, "ipc": ipc}}
    return CreateSandbox(id="pod-" + uuid.uuid4().hex[:10], netns_path=netns, config=dict(config, linux=linux))


def _edit(bundle: str, change: Callable[[dict[str, Any]], None]) -> str:
    path = os.path.join(bundle, "config.json")
    with open(path) as handle:
        spec = json.load(handle)
    change(spec)
    with open(path, "w") as handle:
        json.dump(spec, handle)
    return bundle


async def _call(client: Client, method: str, request: Any, response: Any) -> Any:
    return await client.call(TASK_SERVICE, method, request, response, metadata=META)


async def _read_until(path: str, marker: bytes, timeout: float = 20.0) -> bytes:
    """Read a FIFO until ``marker`` appeared (a terminal's output does not end by itself)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    data = bytearray()
    found = loop.create_future()

    def readable() -> None:
        try:
            data.extend(os.read(fd, 65536))
        except BlockingIOError:
            return
        if marker in data and not found.done():
            found.set_result(None)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(found, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return bytes(data)


@pytest.fixture
async def client(sandboxer: RuncSandboxer):
    connection = await Client.connect_unix(sandboxer.task_server.socket_path)
    yield connection
    await connection.close()


@pytest.mark.asyncio
async def test_shared_pid_container_leaves_no_process_holding_its_output(
        sandboxer: RuncSandboxer, netns: str, container_bundle, fifo, run_container, client) -> None:
    """critest PodPID / Multiple Containers: the init's children die with it, so the engine's read
    of the output FIFO ends (containerd waits for that before it deletes the task)."""
    req = _pod(netns=netns)
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    cid = f"{req.id}-web"
    out = fifo("web")
    reader = asyncio.ensure_future(read_fifo(out, timeout=30))
    bundle = container_bundle(req.id, status.pid, ["sh", "-c", "sleep 1000 & echo started; wait"], pid_ns=True)
    await run_container(client, cid, bundle, out)
    pids = (await _call(client, "Pids", shim_pb2.PidsRequest(id=cid), shim_pb2.PidsResponse)).processes
    assert len(pids) == 2, pids
    waiter = asyncio.ensure_future(_call(client, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse))
    await _call(client, "Kill", shim_pb2.KillRequest(id=cid, signal=9), empty_pb2.Empty)
    assert (await asyncio.wait_for(waiter, 30)).exit_status == 137
    assert (await reader).strip() == b"started"  # EOF: the orphaned sleep is gone as well
    await _call(client, "Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
    assert all(start_time(p.pid) is None for p in pids)


@pytest.mark.asyncio
async def test_kill_all_reaches_processes_left_after_the_init(
        sandboxer: RuncSandboxer, netns: str, container_bundle, run_container, client) -> None:
    """containerd's task Delete sends Kill(all) after the init exited; it must still kill."""
    req = _pod(netns=netns)
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    cid = f"{req.id}-c"
    bundle = container_bundle(req.id, status.pid, ["sh", "-c", "sleep 1000 & wait"], pid_ns=True)
    await run_container(client, cid, bundle, "")
    backend_pids = (await _call(client, "Pids", shim_pb2.PidsRequest(id=cid), shim_pb2.PidsResponse)).processes
    init = (await _call(client, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)).pid
    sleeper = next(p.pid for p in backend_pids if p.pid != init)
    await _call(client, "Kill", shim_pb2.KillRequest(id=cid, signal=9, all=True), empty_pb2.Empty)
    waited = await asyncio.wait_for(_call(client, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse), 30)
    assert waited.exit_status == 137
    await _call(client, "Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
    assert start_time(sleeper) is None


@pytest.mark.asyncio
async def test_host_pid_and_host_ipc_pod(sandboxer: RuncSandboxer, netns: str, container_bundle, fifo,
                                         run_container, client) -> None:
    """critest HostPID / HostIpc: the pod and its containers use the node's PID and IPC namespaces."""
    req = _pod(netns=netns, pid="NODE", ipc="NODE")
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    for ns_type in ("pid", "ipc"):
        assert os.readlink(f"/proc/{status.pid}/ns/{ns_type}") == os.readlink(f"/proc/self/ns/{ns_type}")
    assert not os.path.ismount(os.path.join(sandboxer.directory, req.id, "shm"))  # containerd gives the node's

    def host_namespaces(spec: dict[str, Any]) -> None:  # containerd drops pid and ipc for NODE
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] not in ("pid", "ipc")]
    out = fifo("host-ns")
    reader = asyncio.ensure_future(read_fifo(out))
    script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/ipc"
    bundle = _edit(container_bundle(req.id, status.pid, ["sh", "-c", script]), host_namespaces)
    await run_container(client, f"{req.id}-c", bundle, out)
    assert (await reader).decode().split() == [os.readlink("/proc/self/ns/pid"), os.readlink("/proc/self/ns/ipc")]


@pytest.mark.asyncio
async def test_dns_hostname_hosts_and_shared_dev_shm(sandboxer: RuncSandboxer, netns: str, container_bundle,
                                                     fifo, run_container, client) -> None:
    """critest DNS config: the pod's resolv.conf, hostname and hosts files reach every container,
    as containerd's own pods have them, and the pod's containers share one /dev/shm."""
    dns = {"servers": ["10.254.0.10"], "searches": ["svc.example"], "options": ["ndots:5"]}
    req = _pod(netns=netns, hostname="dns-pod", dns_config=dns)
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    script = "cat /etc/resolv.conf; echo ---; cat /etc/hostname; echo ---; cat /etc/hosts; echo shared > /dev/shm/f"
    out = fifo("files")
    reader = asyncio.ensure_future(read_fifo(out))

    def shm_tmpfs(spec: dict[str, Any]) -> None:  # containerd's default spec mounts its own tmpfs there
        spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/dev/shm"]
        spec["mounts"].append({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]})
    await run_container(client, f"{req.id}-w", _edit(container_bundle(req.id, status.pid, ["sh", "-c", script]),
                                                     shm_tmpfs), out)
    resolv, hostname, hosts = (await reader).decode().split("---\n")
    assert resolv == "search svc.example\nnameserver 10.254.0.10\noptions ndots:5\n"
    assert hostname == "dns-pod\n"
    with open("/etc/hosts") as handle:
        assert hosts == handle.read()
    out = fifo("shm")
    reader = asyncio.ensure_future(read_fifo(out))
    await run_container(client, f"{req.id}-r", _edit(container_bundle(req.id, status.pid, ["cat", "/dev/shm/f"]),
                                                     shm_tmpfs), out)
    assert (await reader).strip() == b"shared"


@pytest.mark.asyncio
async def test_sysctls_are_set_in_the_pod_only(sandboxer: RuncSandboxer, netns: str, container_bundle, fifo,
                                               run_container, client) -> None:
    """critest safe / unsafe sysctls: set in the pod's IPC and network namespaces, not the node's."""
    files = ["/proc/sys/kernel/shm_rmid_forced", "/proc/sys/fs/mqueue/msg_max", "/proc/sys/net/ipv4/ip_forward"]

    def host_values() -> list[str]:
        values = []
        for path in files:
            with open(path) as handle:
                values.append(handle.read().strip())
        return values
    before = host_values()
    sysctls = {"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100", "net/ipv4/ip_forward": "1"}
    assert before != ["1", "100", "1"]
    req = _pod(netns=netns, linux={"sysctls": sysctls})
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    out = fifo("sysctls")
    reader = asyncio.ensure_future(read_fifo(out))
    await run_container(client, f"{req.id}-c", container_bundle(req.id, status.pid, ["cat", *files]), out)
    assert (await reader).decode().split() == ["1", "100", "1"]
    assert host_values() == before


@pytest.mark.asyncio
@pytest.mark.parametrize("sysctls, network, ipc, message", [
    ({"vm.swappiness": "10"}, "POD", "POD", "not namespaced"),
    ({"net.ipv4.ip_forward": "1"}, "NODE", "POD", "host network"),
    ({"kernel.shm_rmid_forced": "1"}, "POD", "NODE", "host IPC"),
    ({"kernel/../../etc": "1"}, "POD", "POD", "invalid sysctl name"),
])
async def test_sysctls_that_would_change_the_node_are_refused(sandboxer: RuncSandboxer, sysctls: dict[str, str],
                                                              network: str, ipc: str, message: str) -> None:
    req = _pod(network=network, ipc=ipc, linux={"sysctls": sysctls})
    with pytest.raises(InvalidArgument, match=message):
        await sandboxer.create(req)
    assert not os.path.exists(os.path.join(sandboxer.directory, req.id))


@pytest.mark.asyncio
async def test_oom_killed_container_exits_137_and_stats_count_the_oom_kill(
        sandboxer: RuncSandboxer, netns: str, container_bundle, run_container, client) -> None:
    """critest OOMKilled: containerd reads Stats (memory_oom_control.oom_kill) after a 137 exit."""
    req = _pod(netns=netns, linux={"cgroup_parent": "/kuasar-test-" + uuid.uuid4().hex[:8]})
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    cid = f"{req.id}-hog"
    hog = ["sh", "-c", "x=0123456789abcdef; while true; do x=$x$x; done"]

    def limit(spec: dict[str, Any]) -> None:
        spec["linux"]["resources"] = {"memory": {"limit": 16 << 20, "swap": 16 << 20}}
    await run_container(client, cid, _edit(container_bundle(req.id, status.pid, hog), limit), "")
    waited = await asyncio.wait_for(_call(client, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse), 60)
    assert waited.exit_status == 137
    stats = await _call(client, "Stats", shim_pb2.StatsRequest(id=cid), shim_pb2.StatsResponse)
    metrics = metrics_pb2.Metrics.FromString(stats.stats.value)
    assert metrics.memory_oom_control.oom_kill >= 1
    assert metrics.memory.usage.limit == 16 << 20
    await _call(client, "Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)


@pytest.mark.asyncio
async def test_terminal_container_and_exec_with_resize(sandboxer: RuncSandboxer, netns: str, container_bundle,
                                                       fifo, client) -> None:
    """critest tty container / exec with tty=true and stdin=true: containerd gives FIFOs and
    terminal=true, the task server owns the pty; ResizePty sets its size."""
    req = _pod(netns=netns)
    await sandboxer.create(req)
    status = await sandboxer.start(req.id)
    cid = f"{req.id}-tty"
    stdin, stdout = fifo("tty-in"), fifo("tty-out")
    keep_stdin = os.open(stdin, os.O_RDWR)  # the engine's end of stdin
    try:
        script = "read line; echo size=$(stty size) got=$line; exec sleep 1000"
        bundle = container_bundle(req.id, status.pid, ["sh", "-c", script])
        output = asyncio.ensure_future(_read_until(stdout, b"got=hello"))
        await _call(client, "Create", shim_pb2.CreateTaskRequest(id=cid, bundle=bundle, stdin=stdin, stdout=stdout,
                                                                 terminal=True), shim_pb2.CreateTaskResponse)
        await _call(client, "ResizePty", shim_pb2.ResizePtyRequest(id=cid, width=100, height=40), empty_pb2.Empty)
        await _call(client, "Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse)
        assert (await _call(client, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)).terminal
        os.write(keep_stdin, b"hello\n")
        assert b"size=40 100 got=hello" in await output

        exec_out = fifo("exec-out")
        exec_output = asyncio.ensure_future(read_fifo(exec_out))
        spec = {"args": ["tty"], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0}, "terminal": True}
        await _call(client, "Exec", shim_pb2.ExecProcessRequest(
            id=cid, exec_id="tty-exec", stdin=stdin, stdout=exec_out, terminal=True,
            spec=_any_json(spec)), empty_pb2.Empty)
        await _call(client, "Start", shim_pb2.StartRequest(id=cid, exec_id="tty-exec"), shim_pb2.StartResponse)
        waited = await asyncio.wait_for(_call(client, "Wait", shim_pb2.WaitRequest(id=cid, exec_id="tty-exec"),
                                              shim_pb2.WaitResponse), 30)
        assert waited.exit_status == 0
        assert (await exec_output).decode().strip().startswith("/dev/pts/")
        await _call(client, "Delete", shim_pb2.DeleteRequest(id=cid, exec_id="tty-exec"), shim_pb2.DeleteResponse)
    finally:
        os.close(keep_stdin)


def _any_json(value: dict[str, Any]) -> any_pb2.Any:
    """An OCI Process as containerd's typeurl encodes it (JSON)."""
    return any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                       value=json.dumps(value).encode())


@pytest.mark.asyncio
async def test_creation_time_survives_a_sandboxer_restart(sandboxer: RuncSandboxer, holders, netns: str) -> None:
    """Status after a restart answers the engine's own creation time (never a zero timestamp)."""
    created = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
    req = dataclasses.replace(_pod(netns=netns), created_at=created)
    await sandboxer.create(req)
    started = await sandboxer.start(req.id)
    assert started.created_at == created
    restarted = RuncSandboxer(sandboxer.directory, holders, sandboxer.task_server)
    await restarted.recover()
    try:
        status = await restarted.status(req.id)
        assert status.ready and status.created_at == created
    finally:
        for watch in restarted._watches.values():
            watch.cancel()
