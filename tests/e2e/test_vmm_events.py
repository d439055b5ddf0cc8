"""End to end: a container OOM-killed inside a vmm pod's guest is reported to containerd.

A real vmm-sandboxer + relay + QEMU (TCG) guest; the sandboxer's ``[sandbox].containerd_ttrpc_address``
points at a ttrpc server of ours standing in for containerd's Events service (the component under test is
the whole chain: guest runc applies the cgroup v1 memory limit, vmm-task's OOM watch, GetEvents through
the relay, the sandboxer's forwarder). The container runs a memory hog under a 32 MiB limit, exits 137,
and containerd gets ``Events/Forward`` with topic /tasks/oom, namespace k8s.io and the container's id.
After a sandboxer restart the re-adopted pod's events still arrive, and an event the sandboxer had
received but not yet forwarded when it restarted is forwarded by the next one. The tests run in file
order."""
from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import threading
import uuid

import pytest
from google.protobuf import empty_pb2
from support import Ctl, Sandboxer, wait_for

from kuasar_shared.api.containerd.events import task_pb2
from kuasar_shared.api.containerd.services.events.ttrpc.v1 import events_pb2
from kuasar_shared.ttrpc import Server, Service

LIMIT = 32 << 20
#: doubles a shell string until the memory cgroup kills it
HOG = "x=a; while :; do x=$x$x; done"


class FakeContainerd:
    """containerd's ``containerd.services.events.ttrpc.v1.Events`` on a unix socket, in its own thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: "queue.Queue[events_pb2.Envelope]" = queue.Queue()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: "asyncio.Event | None" = None
        self._thread = threading.Thread(target=self._run, name="fake-containerd", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        svc = Service("containerd.services.events.ttrpc.v1.Events")
        svc.unary("Forward", events_pb2.ForwardRequest, self._forward)
        server = Server([svc])
        await server.listen_unix(self.path)
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.shutdown()

    async def _forward(self, ctx, req):
        self.received.put(req.envelope)
        return empty_pb2.Empty()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10)

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def next_oom(self, timeout: float) -> tuple[str, str, str]:
        env = self.received.get(timeout=timeout)
        oom = task_pb2.TaskOOM()
        assert env.event.Unpack(oom), env.event.type_url
        return env.topic, env.namespace, oom.container_id


@pytest.fixture(scope="module")
def env(guest_image, images, tmp_path_factory):
    sandboxer = Sandboxer(guest_image)
    containerd = FakeContainerd(os.path.join(sandboxer.work, "containerd.sock.ttrpc"))
    with open(sandboxer.config) as f:
        text, n = re.subn(r"(?m)^containerd_ttrpc_address = .*$", 'containerd_ttrpc_address = "%s"' % containerd.path,
                          f.read())
    assert n == 1
    with open(sandboxer.config, "w") as f:
        f.write(text)
    containerd.start()
    sandboxer.start()
    tmp = tmp_path_factory.mktemp("vmmevents")
    tag = uuid.uuid4().hex[:6]
    pod_cfg = tmp / "pod.json"
    pod_cfg.write_text(json.dumps({
        "metadata": {"name": f"oom-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
        "log_directory": str(tmp / "logs"), "linux": {"cgroup_parent": f"/kuasar-e2e-oom-{tag}"}}))
    ctl = Ctl("vmm", sandboxer.listen, str(tmp / "ctl"), images)
    pod_id = ctl("runp", str(pod_cfg), timeout=120).stdout.decode().strip()

    def container(name: str, script: str) -> str:
        path = tmp / f"{name}.json"
        path.write_text(json.dumps({"metadata": {"name": name}, "image": {"image": "busybox"},
                                    "command": ["/bin/sh", "-c", script], "log_path": f"{name}.log",
                                    "linux": {"resources": {"memory_limit_in_bytes": LIMIT}}}))
        ctr = ctl.out("create", pod_id, str(path), str(pod_cfg))
        ctl("start", ctr)
        return ctr

    yield {"sandboxer": sandboxer, "containerd": containerd, "ctl": ctl, "pod": pod_id, "container": container}
    ctl("rmp", pod_id, check=False)
    sandboxer.stop()
    sandboxer.cleanup()
    containerd.stop()


def _exit_code(ctl: Ctl, ctr: str, timeout: float = 60) -> int:
    """The container's exit code once it exited."""
    def exited():
        status = json.loads(ctl.out("inspect", ctr))["status"]
        return status if status["state"] == "CONTAINER_EXITED" else None
    return wait_for(exited, timeout)["exitCode"]


def test_oom_kill_in_the_guest_is_forwarded_to_containerd(env):
    ctl = env["ctl"]
    ctr = env["container"]("hog", "until [ -e /tmp/go ]; do sleep 0.1; done; " + HOG)
    # runc in the guest applied the limit to the container's cgroup v1 memory controller
    cgroup = "$(find /sys/fs/cgroup/memory -type d -name %s)" % ctr
    out = ctl.out("vm-exec", env["pod"], "--", "sh", "-c", "cat %s/memory.limit_in_bytes" % cgroup)
    assert int(out) == LIMIT
    assert env["containerd"].received.empty()
    ctl("exec", ctr, "--", "touch", "/tmp/go")
    assert _exit_code(ctl, ctr) == 137
    assert env["containerd"].next_oom(timeout=20) == ("/tasks/oom", "k8s.io", ctr)
    with pytest.raises(queue.Empty):  # one OOM, one event
        env["containerd"].next_oom(timeout=1)


def test_events_of_a_readopted_pod_still_arrive(env):
    sandboxer = env["sandboxer"]
    sandboxer.stop()
    sandboxer.start()
    ctl = env["ctl"]
    assert json.loads(ctl.out("inspectp", env["pod"]))["status"]["state"] == "SANDBOX_READY"
    ctr = env["container"]("hog2", HOG)
    assert _exit_code(ctl, ctr) == 137
    assert env["containerd"].next_oom(timeout=20) == ("/tasks/oom", "k8s.io", ctr)
    with open(sandboxer.log) as f:
        assert "forwarded /tasks/oom to containerd" in f.read()


def test_an_oom_handed_out_before_a_sandboxer_restart_still_reaches_containerd(env):
    """containerd is away when the OOM happens and the sandboxer restarts before it is back: the guest
    kept the event (not acknowledged) and hands it to the restarted sandboxer, which forwards it."""
    sandboxer, ctl = env["sandboxer"], env["ctl"]
    env["containerd"].stop()
    with open(sandboxer.log) as f:
        seen = f.read().count("guest event /tasks/oom")
    ctr = env["container"]("hog3", HOG)

    def handed_out() -> bool:
        with open(sandboxer.log) as f:
            return f.read().count("guest event /tasks/oom") > seen
    wait_for(handed_out, 60)  # received by the sandboxer, now retrying against the missing containerd
    sandboxer.stop()
    containerd = FakeContainerd(env["containerd"].path)
    env["containerd"] = containerd
    containerd.start()
    sandboxer.start()
    assert containerd.next_oom(timeout=30) == ("/tasks/oom", "k8s.io", ctr)
    assert _exit_code(ctl, ctr) == 137
    with pytest.raises(queue.Empty):
        containerd.next_oom(timeout=1)
