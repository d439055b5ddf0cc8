"""What Kubernetes' CRI validation suite (critest) expects of a wasm pod, without containerd.

A real pod (WasmSandboxer: Create, Start, ..., Shutdown) and its real modules over the Task API of
the wasm-task process, in the order containerd's CRI uses, with container specs shaped like the ones
containerd writes: critest's containers name their command by a bare name (``top``, from
``DefaultContainerCommand``), which the OCI runtimes look up in the process's ``PATH``.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import uuid

import pytest
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.process_identity import wait_exit
from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE, TaskServer
from kuasar_shared.testing.oci import read_fifo
from kuasar_shared.ttrpc import Client

from kuasar_wasm_sandboxer.sandboxer import WASM_TASK, WasmSandboxer
from wasm_helpers import processes_mentioning

META = {"containerd-namespace-ttrpc": "k8s.io"}


@pytest.fixture
async def sandboxer(tmp_path):
    directory = str(tmp_path / "wasm")
    os.makedirs(directory)
    server = await TaskServer.ensure(directory, WASM_TASK)
    wasm = WasmSandboxer(directory, server)
    await wasm.recover()
    yield wasm
    for sandbox_id in [pod.id for pod in wasm.pods]:
        await wasm.shutdown(sandbox_id)
    await server.close()
    os.kill(server.pid, signal.SIGTERM)
    await wait_exit(server.pid)
    assert processes_mentioning(directory) == []


async def _task(client: Client, method: str, request, response):
    return await client.call(TASK_SERVICE, method, request, response, metadata=META, timeout=30)


def _set_env(bundle: str, env: list[str]) -> str:
    path = os.path.join(bundle, "config.json")
    with open(path) as handle:
        spec = json.load(handle)
    spec["process"]["env"] = env
    with open(path, "w") as handle:
        json.dump(spec, handle)
    return bundle


async def _run(client: Client, cid: str, bundle: str, fifo) -> tuple[int, bytes]:
    """Create, Start, Wait, Delete as containerd's CRI does; the exit status and stdout."""
    out = fifo("out-" + cid)
    reader = asyncio.ensure_future(read_fifo(out))
    await _task(client, "Create", shim_pb2.CreateTaskRequest(id=cid, bundle=bundle, stdout=out),
                shim_pb2.CreateTaskResponse)
    await _task(client, "Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse)
    waited = await _task(client, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse)
    output = await asyncio.wait_for(reader, 20)
    await _task(client, "Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse)
    return waited.exit_status, output


async def test_bare_command_name_is_found_in_path(sandboxer: WasmSandboxer, bundle_factory, rootfs_factory,
                                                  fifo) -> None:
    """``args = ["hello.wat"]`` runs ``/bin/hello.wat`` through the env's PATH (critest's ``top``);
    without a PATH in the env the runtimes' default path is searched; a name in no folder of PATH is
    still refused at Create with a message naming it."""
    pod = CreateSandbox(id="pod-" + uuid.uuid4().hex[:10], config={"linux": {}})
    await sandboxer.create(pod)
    await sandboxer.start(pod.id)
    client = await Client.connect_unix(sandboxer.task_server.socket_path)
    try:
        # PATH=/bin from the image config (the bundle factory's env)
        status, output = await _run(client, pod.id + "-path", bundle_factory(["hello.wat"], sandbox_id=pod.id), fifo)
        assert (status, output) == (0, b"hello from wat\n")
        # no PATH at all: /usr/local/sbin:...:/bin, the module moved to /usr/bin
        root = rootfs_factory("rootfs-default-path")
        os.makedirs(os.path.join(root, "usr", "bin"))
        shutil.move(os.path.join(root, "bin", "hello.wat"), os.path.join(root, "usr", "bin", "hello.wat"))
        bundle = _set_env(bundle_factory(["hello.wat"], sandbox_id=pod.id, rootfs=root), [])
        status, output = await _run(client, pod.id + "-default", bundle, fifo)
        assert (status, output) == (0, b"hello from wat\n")
        # a name in no PATH folder and not in the rootfs: a clear InvalidArgument, the pod keeps serving
        with pytest.raises(InvalidArgument, match="'nothere.wat' does not exist"):
            await _task(client, "Create", shim_pb2.CreateTaskRequest(
                id=pod.id + "-missing", bundle=bundle_factory(["nothere.wat"], sandbox_id=pod.id)),
                shim_pb2.CreateTaskResponse)
        status, output = await _run(client, pod.id + "-again", bundle_factory(["hello.wat"], sandbox_id=pod.id), fifo)
        assert (status, output) == (0, b"hello from wat\n")
    finally:
        await client.close()
    await sandboxer.stop(pod.id, None)
    await sandboxer.shutdown(pod.id)
    assert not os.path.exists(sandboxer.pods.pod_dir(pod.id))
