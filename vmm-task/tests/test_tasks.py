"""tasks: the host-written spec adapted to the guest (namespaces, cgroups), and GuestTaskBackend
driving the real runc on this host the way it does in the VM (bundle from the share, OOM watch)."""
import asyncio
import errno
import fcntl
import json
import os
import shutil
import subprocess
import uuid

import pytest
from kuasar_shared.io import StreamingHub
from kuasar_shared.values import Mount, Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask
from kuasar_shared.testing.oci import busybox_rootfs_for, read_fifo

from kuasar_vmm_task.events import EventQueue
from kuasar_vmm_task.pod import PodNamespaces
from kuasar_vmm_task.tasks import RUNC_SEALS, GuestTaskBackend, adapt_spec, sealed_copy

RUNC = shutil.which("runc")


def _spec(ns):
    return {"hostname": "x", "process": {"args": ["sh"]}, "linux": {"namespaces": ns}}


def test_pod_namespaces_joined_network_dropped(tmp_path):
    pod = PodNamespaces(str(tmp_path))
    pod.types = ("ipc", "uts", "pid")
    spec = adapt_spec(_spec([{"type": "network", "path": "/proc/5/ns/net"}, {"type": "ipc", "path": "/proc/5/ns/ipc"},
                             {"type": "uts"}, {"type": "pid", "path": "/proc/5/ns/pid"}, {"type": "mount"}]), "c1", pod)
    assert spec["linux"]["namespaces"] == [
        {"type": "ipc", "path": f"{tmp_path}/ipc"}, {"type": "uts", "path": f"{tmp_path}/uts"},
        {"type": "pid", "path": f"{tmp_path}/pid"}, {"type": "mount"}]
    assert "hostname" not in spec  # shared UTS: the pod's hostname stays
    assert spec["linux"]["cgroupsPath"] == "/kuasar/c1"


def test_without_pod_namespaces_host_paths_become_new_namespaces(tmp_path):
    pod = PodNamespaces(str(tmp_path))
    spec = adapt_spec(_spec([{"type": "pid", "path": "/proc/9/ns/pid"}, {"type": "ipc"}]), "c2", pod)
    assert spec["linux"]["namespaces"] == [{"type": "pid"}, {"type": "ipc"}]
    assert spec["hostname"] == "x"


def test_sealed_copy_is_what_runc_takes_for_its_own_copy():
    path, fd = sealed_copy("runc")
    try:
        assert path == f"/proc/{os.getpid()}/fd/{fd}"
        with open(path, "rb") as copy, open(RUNC, "rb") as original:
            assert copy.read() == original.read()
        with open(path, "rb") as copy:  # what runc's is_self_cloned() checks on /proc/self/exe
            assert fcntl.fcntl(copy.fileno(), fcntl.F_GET_SEALS) == RUNC_SEALS
        try:
            os.pwrite(fd, b"x", 0)
            raise AssertionError("the sealed copy accepted a write")
        except PermissionError as err:
            assert err.errno == errno.EPERM
        version = subprocess.run([path, "--version"], capture_output=True, check=True).stdout
        assert version == subprocess.run([RUNC, "--version"], capture_output=True, check=True).stdout
    finally:
        os.close(fd)


def test_sealed_copy_of_a_missing_binary_names_it():
    with pytest.raises(FileNotFoundError, match="no-such-runc"):
        sealed_copy("no-such-runc")


def test_existing_cgroups_path_kept(tmp_path):
    spec = _spec([])
    spec["linux"]["cgroupsPath"] = "/kubepods/pod1/c3"
    assert adapt_spec(spec, "c3", PodNamespaces(str(tmp_path)))["linux"]["cgroupsPath"] == "/kubepods/pod1/c3"


async def test_backend_runs_the_share_bundle_and_watches_oom(tmp_path, tmp_path_factory):
    rootfs = busybox_rootfs_for(tmp_path_factory, RUNC, "runc", subreaper=True)  # inits re-parent to us
    cid = "guest-" + uuid.uuid4().hex[:8]
    bundle = tmp_path / "share" / cid
    bundle.mkdir(parents=True)
    subprocess.run([RUNC, "spec", "--bundle", str(bundle)], check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["process"].update(terminal=False, args=["sh", "-c", "echo in-guest; exit 7"])
    spec["linux"]["namespaces"].append({"type": "network", "path": "/proc/1/ns/net"})
    spec["linux"]["cgroupsPath"] = "/" + cid
    (bundle / "config.json").write_text(json.dumps(spec))
    memory = tmp_path / "memory"  # a stand-in for the guest's memory cgroup of the container
    (memory / cid).mkdir(parents=True)
    for name in ("memory.oom_control", "cgroup.event_control"):
        (memory / cid / name).write_text("")
    events = EventQueue(cgroup_root=str(memory))
    backend = GuestTaskBackend(StreamingHub(), PodNamespaces(str(tmp_path / "ns")), events,
                               share=str(tmp_path / "share"), runc_root=str(tmp_path / "runc"))
    out = str(tmp_path / "out")
    os.mkfifo(out)
    reader = asyncio.ensure_future(read_fifo(out))
    try:
        assert backend.hooks.runc.startswith(f"/proc/{os.getpid()}/fd/")  # the sealed copy runs the container
        await backend.create(CreateTask(id=cid, bundle="/host/bundle/ignored", stdio=Stdio(stdout=out),
                                        rootfs=(Mount(type="bind", source="/host/rootfs/ignored"),)))
        adapted = json.loads((bundle / "config.json").read_text())
        assert "network" not in [ns["type"] for ns in adapted["linux"]["namespaces"]]
        assert cid in events._watches and (memory / cid / "cgroup.event_control").read_text()
        assert (await backend.state(cid, "")).status is TaskStatus.CREATED
        await backend.start(cid, "")
        assert (await asyncio.wait_for(backend.wait(cid, ""), 20)).exit_status == 7
        assert (await reader).strip() == b"in-guest"
        await backend.delete(cid, "")
        assert cid not in events._watches
    finally:
        reader.cancel()
        await backend.shutdown("", now=True)
        await backend.close()
