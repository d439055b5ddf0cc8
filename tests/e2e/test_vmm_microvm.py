"""End to end on QEMU's ``microvm`` machine (virtio-mmio, no PCI, no ACPI timers) under TCG: the same
pod life as on q35, through kuasar-ctl and a vmm-sandboxer configured with ``machine_type = "microvm"``.
The guest kernel gets the host's TSC rate (``tsc_early_khz``) from the sandboxer, finds its devices
through ACPI, and runs a container with runc; the pod's resources size the VM and its cgroup; removal
leaves nothing behind."""
from __future__ import annotations

import json
import uuid

import pytest
from support import Ctl, assert_nothing_left, running_sandboxer, wait_for


@pytest.fixture(scope="module")
def microvm(guest_image):
    with running_sandboxer(guest_image, machine_type='"microvm"') as sandboxer:
        yield sandboxer


def test_microvm_pod_runs_a_container_and_leaves_nothing(microvm, images, tmp_path):
    tag = uuid.uuid4().hex[:6]
    pod_cfg = tmp_path / "pod.json"
    pod_cfg.write_text(json.dumps({
        "metadata": {"name": f"mvm-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
        "hostname": f"mvm-{tag}", "log_directory": str(tmp_path / "logs"),
        "linux": {"cgroup_parent": f"/kuasar-e2e-mvm-{tag}",
                  "resources": {"cpu_period": 100000, "cpu_quota": 150000, "memory_limit_in_bytes": 320 << 20}}}))
    ctr_cfg = tmp_path / "ctr.json"
    ctr_cfg.write_text(json.dumps({"metadata": {"name": "app"}, "image": {"image": "busybox"}, "log_path": "app.log",
                                   "command": ["/bin/sh", "-c", "echo up in $(hostname); sleep 3600"]}))
    ctl = Ctl("vmm", microvm.listen, str(tmp_path / "ctl"), images, "streaming")
    pod, ctr = ctl.out("run", str(pod_cfg), str(ctr_cfg), timeout=120).split()
    info = json.loads(ctl.out("inspectp", pod))["info"]
    with open(f"/proc/{info['pid']}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[argv.index(b"-machine") + 1].startswith(b"microvm")
    assert any(a.startswith(b"tsc_early_khz=") for a in b" ".join(argv).split())
    wait_for(lambda: ctl("logs", ctr).stdout == f"up in mvm-{tag}\n".encode(), 30)
    result = ctl("exec", ctr, "--", "sh", "-c", "ls /sys/bus/virtio/devices | wc -l; exit 3", check=False)
    assert result.returncode == 3 and int(result.stdout) >= 3  # rng, serial, 9p: virtio-mmio devices
    # pod resources: ceil(150000 / 100000) = 2 vCPUs, 320 MiB of RAM; QEMU in the pod's cgroup (v1), limited
    # to that RAM + memory_overhead_in_mb (256)
    assert argv[argv.index(b"-smp") + 1] == b"2,maxcpus=2" and argv[argv.index(b"-m") + 1] == b"320M"
    guest = ctl.out("vm-exec", pod, "--", "sh", "-c", "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo")
    cpus, memtotal = guest.splitlines()
    assert cpus == "2" and 250 << 10 < int(memtotal.split()[1]) <= 320 << 10
    cgroup = f"/sys/fs/cgroup/memory/kuasar-e2e-mvm-{tag}/{pod}"
    with open(f"{cgroup}/memory.limit_in_bytes") as f:
        assert int(f.read()) == (320 + 256) << 20
    with open(f"{cgroup}/cgroup.procs") as f:
        assert str(info["pid"]) in f.read().split()
    ctl("rm", ctr)
    ctl("rmp", pod)
    assert_nothing_left(microvm, pod, info["netnsPath"], [str(tmp_path / "ctl")], f"kuasar-e2e-mvm-{tag}")
