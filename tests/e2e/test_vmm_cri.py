"""What Kubernetes' CRI validation suite (critest) expects of a vmm pod, driven as stock containerd drives it.

A real vmm-sandboxer + relay + QEMU (TCG) guest, called over the Sandbox API (Create with the CRI
PodSandboxConfig in ``options``, Start) and the Task API at the address Start returns, in containerd's
order (Create, Start, Wait, Delete), with a container spec built as containerd 2.x builds it for a
sandboxer that is not its own ``podsandbox``: no ``/etc/hostname``, ``/etc/hosts`` or
``/etc/resolv.conf`` mounts (containerd writes and mounts those files only for its own pods). The pod's
DNS config must still reach the container (critest: "should support DNS config"), and PID 1 of the
pod's PID namespace must not look like the ``sleep`` critest's "execSync with timeout" hunts for, and the
pod's IPC sysctls must be those of the container's IPC namespace (critest's safe and unsafe sysctls); a
container with NET_ADMIN can make a bridge in the guest (critest's "adding capability"); a read-only volume
keeps the host mounts below it writable (critest's "non-recursive readonly mounts"); an exec may have a
terminal (critest's "exec with tty=true and stdin=true").
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import uuid

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from support import assert_nothing_left

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.containerd.types import sandbox_pb2 as types_sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.ctl.clients import SandboxClient, TaskClient
from kuasar_shared.ctl.config import ContainerConfig, MountSpec
from kuasar_shared.ctl.spec import SpecInputs, build_container_spec, exec_process_spec
from kuasar_shared.statefiles import write_json_atomic
from kuasar_shared.testing.oci import read_fifo


def _pod_config(tag: str, cgroup_parent: str) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(hostname=f"cri-{tag}")
    config.metadata.name, config.metadata.namespace, config.metadata.uid = f"cri-{tag}", "e2e", uuid.uuid4().hex
    config.dns_config.servers.extend(["10.254.0.10"])
    config.dns_config.searches.extend(["e2e.svc.kuasar.test"])
    config.dns_config.options.extend(["ndots:5"])
    config.linux.cgroup_parent = cgroup_parent
    config.linux.sysctls.update({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100"})
    return config


async def _run(task: TaskClient, work: str, images: str, pod: api_pb2.PodSandboxConfig, pod_id: str, pid: int,
               ctr: ContainerConfig, cid: str) -> tuple[str, int]:
    """One container as containerd's CRI runs it: spec, bundle, Create, Start, Wait, Delete."""
    spec = build_container_spec(ctr, pod, SpecInputs(container_id=cid, sandbox_id=pod_id, sandbox_pid=pid,
                                                     image_name="busybox"))
    assert not [m for m in spec["mounts"] if m["destination"].startswith("/etc/")]  # as containerd sends it
    bundle = os.path.join(work, cid)
    os.makedirs(bundle)
    spec["root"] = {"path": os.path.join(images, "busybox"), "readonly": False}
    write_json_atomic(os.path.join(bundle, "config.json"), spec)
    stdout = os.path.join(work, cid + ".out")
    os.mkfifo(stdout)
    reader = asyncio.ensure_future(read_fifo(stdout, timeout=120))
    await task.call("Create", shim_pb2.CreateTaskRequest(id=cid, bundle=bundle, stdout=stdout, stderr=stdout),
                    shim_pb2.CreateTaskResponse, timeout=120)
    await task.call("Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse, timeout=120)
    waited = await task.call("Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse, timeout=120)
    output = (await reader).decode()
    await task.call("Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse, timeout=120)
    return output, waited.exit_status


async def _exec_tty(task: TaskClient, work: str, images: str, pod: api_pb2.PodSandboxConfig, pod_id: str,
                    pid: int, cid: str) -> tuple[str, int]:
    """critest "exec with tty=true and stdin=true": an exec with a terminal in a running container
    (containerd's ExecSync/Exec: Exec with terminal and the container's process, Start, Wait)."""
    ctr = ContainerConfig(name="tty", image="busybox", command=("/bin/sh", "-c", "sleep 600"))
    spec = build_container_spec(ctr, pod, SpecInputs(container_id=cid, sandbox_id=pod_id, sandbox_pid=pid,
                                                     image_name="busybox"))
    bundle = os.path.join(work, cid)
    os.makedirs(bundle)
    spec["root"] = {"path": os.path.join(images, "busybox"), "readonly": False}
    write_json_atomic(os.path.join(bundle, "config.json"), spec)
    await task.call("Create", shim_pb2.CreateTaskRequest(id=cid, bundle=bundle), shim_pb2.CreateTaskResponse,
                    timeout=120)
    await task.call("Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse, timeout=120)
    stdout, stdin = os.path.join(work, cid + ".tty"), os.path.join(work, cid + ".in")
    os.mkfifo(stdout)
    os.mkfifo(stdin)
    reader = asyncio.ensure_future(read_fifo(stdout, timeout=120))
    process = exec_process_spec(spec, ["/bin/sh", "-c", "tty; read line; echo got $line"], tty=True)
    await task.call("Exec", shim_pb2.ExecProcessRequest(
        id=cid, exec_id="e1", terminal=True, stdin=stdin, stdout=stdout,
        spec=any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process",
                         value=json.dumps(process).encode())), empty_pb2.Empty, timeout=120)
    writer = asyncio.get_running_loop().run_in_executor(None, _write_fifo, stdin, b"hello\n")
    await task.call("Start", shim_pb2.StartRequest(id=cid, exec_id="e1"), shim_pb2.StartResponse, timeout=120)
    await task.call("ResizePty", shim_pb2.ResizePtyRequest(id=cid, exec_id="e1", width=100, height=40),
                    empty_pb2.Empty, timeout=120)
    waited = await task.call("Wait", shim_pb2.WaitRequest(id=cid, exec_id="e1"), shim_pb2.WaitResponse,
                             timeout=120)
    output = (await reader).decode()
    await writer
    await task.call("Delete", shim_pb2.DeleteRequest(id=cid, exec_id="e1"), shim_pb2.DeleteResponse, timeout=120)
    await task.call("Kill", shim_pb2.KillRequest(id=cid, signal=9), empty_pb2.Empty, timeout=120)
    await task.call("Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse, timeout=120)
    await task.call("Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse, timeout=120)
    return output, waited.exit_status


def _write_fifo(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


async def _cri_pod(vmm, images: str, work: str, netns: str, cgroup: str, tag: str) -> list[tuple[str, int]]:
    sandbox = SandboxClient(vmm.listen, "vmm")
    pod_id = "cri-" + tag
    pod = _pod_config(tag, "/" + cgroup)
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    try:
        await sandbox.call("Create", sandbox_pb2.ControllerCreateRequest(
            sandbox_id=pod_id, netns_path=netns,
            options=any_pb2.Any(type_url="runtime.v1.PodSandboxConfig", value=pod.SerializeToString()),
            sandbox=types_sandbox_pb2.Sandbox(
                sandbox_id=pod_id, sandboxer="vmm", runtime=types_sandbox_pb2.Sandbox.Runtime(
                    name="io.containerd.kuasar-vmm.v1"), created_at=now, updated_at=now)), 180)
        started = await sandbox.call("Start", sandbox_pb2.ControllerStartRequest(sandbox_id=pod_id), 180)
        files = ContainerConfig(name="dns", image="busybox", command=(
            "/bin/sh", "-c", "cat /etc/resolv.conf; echo ==; cat /etc/hostname; echo ==; "
                             "grep -c localhost /etc/hosts; echo ==; cat /proc/1/comm; echo ==; "
                             "cat /proc/sys/kernel/shm_rmid_forced /proc/sys/fs/mqueue/msg_max"))
        # critest "adding capability" (and "Privileged is true"): a bridge in the guest
        bridge = ContainerConfig(name="bridge", image="busybox", add_capabilities=("NET_ADMIN",), command=(
            "/bin/sh", "-c", "brctl addbr kuasar0 && brctl delbr kuasar0 && echo bridged"))
        # critest "non-recursive readonly mounts": a read-only volume whose host folder has a writable
        # tmpfs mounted below it; the tmpfs stays writable in the container, the volume does not
        readonly = ContainerConfig(name="ro", image="busybox", mounts=(
            MountSpec(container_path="/mnt", host_path=os.path.join(work, "vol"), readonly=True),), command=(
            "/bin/sh", "-c", "touch /mnt/tmpfs/file && ! touch /mnt/file 2>/dev/null && echo ro-ok"))
        task = TaskClient(started.address)
        try:
            return [await _run(task, work, images, pod, pod_id, started.pid, files, "c-" + tag),
                    await _run(task, work, images, pod, pod_id, started.pid, bridge, "b-" + tag),
                    await _run(task, work, images, pod, pod_id, started.pid, readonly, "r-" + tag),
                    await _exec_tty(task, work, images, pod, pod_id, started.pid, "t-" + tag)]
        finally:
            await task.close()
    finally:
        try:
            await sandbox.call("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id=pod_id, timeout_secs=30), 120)
        finally:
            await sandbox.call("Shutdown", sandbox_pb2.ControllerShutdownRequest(sandbox_id=pod_id), 120)
            await sandbox.close()


def test_a_stock_containerd_pod_gets_pod_files_sysctls_and_bridging(vmm, images, tmp_path):
    tag = uuid.uuid4().hex[:8]
    name = f"kve2e-cri-{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = f"/var/run/netns/{name}"
    work = str(tmp_path / "w")
    os.makedirs(work)
    cgroup = f"kuasar-e2e-vmm-cri-{tag}"
    try:
        os.makedirs(os.path.join(work, "vol", "tmpfs"))
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(work, "vol", "tmpfs")], check=True)
        (output, status), bridged, readonly, tty = asyncio.run(_cri_pod(vmm, images, work, netns, cgroup, tag))
        resolv, hostname, hosts, init, sysctls = output.split("==\n")
        assert status == 0, output
        assert "nameserver 10.254.0.10" in resolv.splitlines()
        assert "search e2e.svc.kuasar.test" in resolv.splitlines()
        assert "options ndots:5" in resolv.splitlines()
        assert hostname == f"cri-{tag}\n"
        assert int(hosts) >= 1
        # PID 1 of the pod's shared PID namespace is no `sleep` to the container's pgrep (critest's
        # "execSync with timeout" looks for leftover sleeps)
        assert init.strip() and init.strip() != "sleep"
        # the pod's IPC sysctls in the pod's IPC namespace (critest's safe and unsafe sysctls)
        assert sysctls.split() == ["1", "100"]
        # the guest kernel has bridging for a NET_ADMIN container
        assert bridged == ("bridged\n", 0)
        assert readonly == ("ro-ok\n", 0)
        # an exec with a terminal: a pty from runc in the guest, stdin reaches it, output comes back
        assert tty[1] == 0 and "/dev/pts/" in tty[0] and "got hello\r\n" in tty[0], tty  # \r\n: a pty
        subprocess.run(["umount", os.path.join(work, "vol", "tmpfs")], check=True)
        assert_nothing_left(vmm, f"cri-{tag}", "", [work], cgroup)
    finally:
        subprocess.run(["umount", os.path.join(work, "vol", "tmpfs")], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["ip", "netns", "delete", name], check=False)
        shutil.rmtree(work, ignore_errors=True)
