"""The runc-sandboxer process: SIGTERM + restart keeps pods Ready and open task connections working."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from kuasar_shared import process
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as cri_pb2
from kuasar_shared.process_identity import start_time
from kuasar_shared.sandbox.controller import READY
from kuasar_shared.testing.conformance import SandboxApiClient
from kuasar_shared.ttrpc import Client
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE

BIN = os.path.dirname(sys.executable)


async def _start_sandboxer(listen: str, directory: str) -> process.Process:
    child = process.spawn([os.path.join(BIN, "runc-sandboxer"), "--listen", listen, "--dir", directory])
    for _ in range(200):
        if os.path.exists(listen):
            return child
        if child.returncode is not None:
            raise AssertionError(f"runc-sandboxer exited with {child.returncode}")
        await asyncio.sleep(0.05)
    child.kill()
    raise AssertionError("runc-sandboxer did not listen")


def _create(sandbox_id: str) -> sandbox_pb2.ControllerCreateRequest:
    config = cri_pb2.PodSandboxConfig(hostname="restart-pod", linux=cri_pb2.LinuxPodSandboxConfig(
        security_context=cri_pb2.LinuxSandboxSecurityContext(namespace_options=cri_pb2.NamespaceOption(
            network=cri_pb2.NODE, pid=cri_pb2.CONTAINER))))
    request = sandbox_pb2.ControllerCreateRequest(sandbox_id=sandbox_id, sandboxer="runc")
    request.options.Pack(config, type_url_prefix="")
    request.options.type_url = "runtime.v1.PodSandboxConfig"
    return request


@pytest.mark.asyncio
async def test_sigterm_and_restart_keep_pods_and_task_connections(tmp_path, container_bundle, run_container,
                                                                  stop_pid) -> None:
    listen, directory = str(tmp_path / "runc.sock"), str(tmp_path / "dir")
    sandboxer = await _start_sandboxer(listen, directory)
    with open(os.path.join(directory, "task-server.json")) as handle:
        record = json.load(handle)
    task_pid, front_pid = record["pid"], record["front"]["pid"]
    api = SandboxApiClient("unix://" + listen)
    try:
        await api.create(_create("restart-pod"))
        started = await api.start("restart-pod")
        assert started.address.startswith("ttrpc+unix:///")
        task = await Client.connect(started.address)
        cid = "restart-ctr"
        pid = await run_container(task, cid, container_bundle("restart-pod", started.pid, ["sleep", "1000"],
                                                              net=False), "")
        sandboxer.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(sandboxer.wait(), 20)).status == 0
        assert start_time(started.pid) is not None and start_time(pid) is not None
        assert start_time(task_pid) is not None

        sandboxer = await _start_sandboxer(listen, directory)
        await api.close()
        api = SandboxApiClient("unix://" + listen)
        status = await api.status("restart-pod")
        assert status.state == READY and status.pid == started.pid and status.address == started.address
        with open(os.path.join(directory, "task-server.json")) as handle:
            assert json.load(handle)["pid"] == task_pid
        state = await task.call(TASK_SERVICE, "State", shim_pb2.StateRequest(id=cid), shim_pb2.StateResponse)
        assert state.status == 2 and state.pid == pid
        await api.stop("restart-pod")
        await api.shutdown("restart-pod")
        await task.close()
    finally:
        await api.close()
        sandboxer.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sandboxer.wait(), 20)
        stop_pid(task_pid)
        stop_pid(front_pid)
    assert start_time(pid) is None and start_time(started.pid) is None


def test_shim_binary_answers_info() -> None:
    shim = shutil.which("containerd-shim-kuasar-runc-v1", path=BIN)
    assert shim is not None
    done = subprocess.run([shim, "-info"], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
