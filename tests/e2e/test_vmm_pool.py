"""End to end: vmm pods that take a warm VM of the pool (``template_pool = 1``) through kuasar-ctl, a real
vmm-sandboxer, relay and QEMU (TCG). The first pod restores from its template and has the pool keep a warm
VM of its class; the second takes it and runs a container with its own hostname and share. A sandboxer
killed and started again re-attaches that pod and stops the warm VM the killed one had refilled; removing
the pods and stopping the sandboxer leaves no QEMU, pool entry, mount or cgroup. The tests run in file order."""
from __future__ import annotations

import json
import os
import time
from typing import Iterator

import pytest
from kuasar_vmm_sandboxer.hypervisors.qemu.pool import POOL_DIR, entries
from support import (Ctl, Sandboxer, assert_nothing_left, pids_with, running, start_sleeping_pod, template_sandboxer,
                     wait_for)



def _warm(sandboxer: Sandboxer) -> list[dict]:
    """The records of the warm VMs ready in the sandboxer's pool."""
    return [record for record in entries(sandboxer.dir).values() if record.get("ready")]


@pytest.fixture(scope="module")
def pooled(guest_image: str) -> Iterator[Sandboxer]:
    with template_sandboxer(guest_image, template_pool="1") as (sandboxer, _):
        yield sandboxer


@pytest.fixture(scope="module")
def pods(pooled, images, tmp_path_factory) -> Iterator[list[dict]]:
    tmp = tmp_path_factory.mktemp("vmmpool")
    ctl = Ctl("vmm", pooled.listen, str(tmp / "ctl"), images)
    out: list[dict] = []
    try:
        out.append(start_sleeping_pod(ctl, tmp, "pool0", 2))
        wait_for(lambda: _warm(pooled), 120)  # the first pod's class is kept: its warm VM is made meanwhile
        out.append(start_sleeping_pod(ctl, tmp, "pool1", 2))
        yield out
    finally:
        for pod in out:
            ctl("rmp", pod["id"], check=False)


def _info(pod: dict) -> dict:
    return json.loads(pod["ctl"].out("inspectp", pod["id"]))["info"]


def test_the_second_pod_takes_the_warm_vm_the_first_had_the_pool_make(pooled, pods):
    first, second = (_info(p)["sandboxerInfo"] for p in pods)
    assert first["warm"] == "false" and second["warm"] == "true"
    assert first["template"] == second["template"]
    for pod in pods:
        assert pod["ctl"].out("exec", pod["ctr"], "--", "hostname") == pod["hostname"]
        clock = int(pod["ctl"].out("vm-exec", pod["id"], "--", "date", "+%s"))
        assert abs(clock - time.time()) < 5, "guest clock not synced when the pod took its VM"
    print("pod + container running: restored %.2f s, warm %.2f s" % (pods[0]["seconds"], pods[1]["seconds"]))
    pod_dir = os.path.join(pooled.dir, pods[1]["id"])
    assert {"agent.sock", "qmp.sock", "console.log", "shared"} <= set(os.listdir(pod_dir))
    wait_for(lambda: _warm(pooled), 120)  # the pool fills again


def test_a_restarted_sandboxer_keeps_the_warm_pod_and_stops_the_old_pools_vm(pooled, pods):
    [left] = _warm(pooled)
    pid = _info(pods[1])["pid"]
    os.kill(pooled.proc.pid, 9)
    pooled.proc.wait()
    assert running(pid) and running(left["pid"])
    os.unlink(pooled.listen)
    pooled.start()
    wait_for(lambda: not running(left["pid"]), 30)
    status = json.loads(pods[1]["ctl"].out("inspectp", pods[1]["id"]))
    assert status["status"]["state"] == "SANDBOX_READY" and status["info"]["pid"] == pid
    assert pods[1]["ctl"].out("exec", pods[1]["ctr"], "--", "hostname") == pods[1]["hostname"]


def test_removed_pods_and_a_stopped_sandboxer_leave_nothing(pooled, pods):
    for pod in pods:
        pod["ctl"]("rmp", pod["id"])
    for pod in pods:
        assert_nothing_left(pooled, pod["id"], "", [pod["root"]], pod["cgroup"])
    wait_for(lambda: _warm(pooled), 120)  # the restarted sandboxer keeps the class of the pods it re-attached
    pooled.stop()
    wait_for(lambda: not pids_with(os.path.join(pooled.dir, POOL_DIR)), 15)
    assert os.listdir(os.path.join(pooled.dir, POOL_DIR)) == []
    pooled.start()  # for the fixture's stop
