"""Fixtures: the sandbox-parent helper, a runc-task server per test, busybox bundles, FIFOs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import uuid
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.daemon.reaper import set_child_subreaper
from kuasar_shared.testing.oci import busybox_rootfs_for, fifo_factory
from kuasar_shared.ttrpc import Client
from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.sandboxer import RuncSandboxer
from kuasar_runc_sandboxer.sandboxer import RUNC_TASK
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE, TaskServer

RUNC = shutil.which("runc")
SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"


@pytest.fixture
def fifo(tmp_path):
    """``fifo(name) -> path`` of a new FIFO in the test's directory."""
    return fifo_factory(tmp_path)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return busybox_rootfs_for(tmp_path_factory, RUNC, "runc")


@pytest.fixture(scope="session")
def holders(busybox_rootfs: str) -> Iterator[HolderParent]:
    """The [sandbox-parent] helper, forked while the test process has no running loop."""
    set_child_subreaper()
    parent = HolderParent.fork()
    yield parent
    parent.close()


@pytest_asyncio.fixture
async def task_server(tmp_path) -> AsyncIterator[TaskServer]:
    directory = str(tmp_path / "runc")
    os.makedirs(directory)
    server = await TaskServer.ensure(directory, RUNC_TASK)
    yield server
    await server.close()
    _stop_pid(server.pid)


def _stop_pid(pid: int) -> None:
    """SIGKILL one process we started (by pid) if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest_asyncio.fixture
async def sandboxer(holders: HolderParent, task_server: TaskServer) -> AsyncIterator[RuncSandboxer]:
    runc = RuncSandboxer(task_server.directory, holders, task_server)
    await runc.recover()
    yield runc
    for sandbox_id in [pod.id for pod in runc.pods]:
        await runc.shutdown(sandbox_id)
    for watch in runc._watches.values():
        watch.cancel()


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh named network namespace with loopback up."""
    name = "kuasar-test-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield f"/var/run/netns/{name}"
    subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def container_bundle(tmp_path, busybox_rootfs: str):
    """``container_bundle(sandbox_id, pod_pid, args, pid_ns=False, net=True) -> bundle`` with a spec
    that joins the pod like containerd's CRI writes it (``/proc/<pod pid>/ns/...``)."""
    def factory(sandbox_id: str, pod_pid: int, args: list[str], pid_ns: bool = False, net: bool = True) -> str:
        bundle = str(tmp_path / ("bundle-" + uuid.uuid4().hex[:8]))
        os.makedirs(bundle)
        subprocess.run([RUNC, "spec", "--bundle", bundle], check=True)
        shutil.copytree(busybox_rootfs, os.path.join(bundle, "rootfs"), symlinks=True)
        with open(os.path.join(bundle, "config.json")) as handle:
            spec = json.load(handle)
        spec["process"].update(terminal=False, args=args, oomScoreAdj=-998)
        spec["root"]["readonly"] = False
        spec["hostname"] = "container-hostname"
        spec["annotations"] = {SANDBOX_ID_ANNOTATION: sandbox_id}
        namespaces = [{"type": "mount"}, {"type": "ipc", "path": f"/proc/{pod_pid}/ns/ipc"},
                      {"type": "uts", "path": f"/proc/{pod_pid}/ns/uts"}]
        namespaces.append({"type": "pid", "path": f"/proc/{pod_pid}/ns/pid"} if pid_ns else {"type": "pid"})
        if net:
            namespaces.append({"type": "network", "path": f"/proc/{pod_pid}/ns/net"})
        spec["linux"]["namespaces"] = namespaces
        with open(os.path.join(bundle, "config.json"), "w") as handle:
            json.dump(spec, handle)
        return bundle
    return factory


async def _run_container(client: Client, container_id: str, bundle: str, stdout: str) -> int:
    """Task.Create + Start over ttrpc, like containerd; returns the init pid."""
    meta = {"containerd-namespace-ttrpc": "k8s.io"}
    created = await client.call(TASK_SERVICE, "Create", shim_pb2.CreateTaskRequest(
        id=container_id, bundle=bundle, stdout=stdout), shim_pb2.CreateTaskResponse, metadata=meta)
    await client.call(TASK_SERVICE, "Start", shim_pb2.StartRequest(id=container_id), shim_pb2.StartResponse,
                      metadata=meta)
    return created.pid


@pytest.fixture
def run_container():
    """``await run_container(client, id, bundle, stdout) -> pid`` (Task Create + Start)."""
    return _run_container


@pytest.fixture
def stop_pid():
    """``stop_pid(pid)``: SIGKILL a process the test started."""
    return _stop_pid
