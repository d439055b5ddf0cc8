"""End to end: the defaults work the first time. A vmm-sandboxer started by hand with no ``--config``
finds the guest image where ``vmm-task/build-image.sh`` (and the demo) put it, picks its accelerator
itself (``accel = "auto"``: TCG on this KVM-PVM host) and runs a pod; an explicit ``accel = "kvm"``
that cannot work fails the pod's Start with a message naming the config key, and leaves nothing.

Without ``--config`` the sandboxer reads ``/var/lib/kuasar/config_qemu.toml`` when a package installed
one, else its built-in defaults; either way no setting here points it at the image."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from support import Ctl, assert_gone, assert_nothing_left, pids_with, running_sandboxer, wait_for

from kuasar_vmm_sandboxer.hypervisors.qemu.accel import probe_kvm
from kuasar_vmm_task.image.build import DEFAULT_OUTDIR, build


@pytest.fixture(scope="module")
def default_image(guest_image: str) -> str:
    """The current guest image in the one default location (the ``guest_image`` fixture may be elsewhere)."""
    build(DEFAULT_OUTDIR, os.path.join(DEFAULT_OUTDIR, ".cache"))
    return DEFAULT_OUTDIR


def _pod_config(tmp_path, tag: str) -> str:
    path = tmp_path / "pod.json"
    path.write_text(json.dumps({"metadata": {"name": f"dflt-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
                                "hostname": f"dflt-{tag}", "log_directory": str(tmp_path / "logs"),
                                "linux": {"cgroup_parent": f"/kuasar-e2e-dflt-{tag}"}}))
    return str(path)


def test_hand_started_sandboxer_without_config_runs_a_pod(default_image, images, tmp_path):
    tag = uuid.uuid4().hex[:6]
    ctr_cfg = tmp_path / "ctr.json"
    ctr_cfg.write_text(json.dumps({"metadata": {"name": "app"}, "image": {"image": "busybox"}, "log_path": "app.log",
                                   "command": ["/bin/sh", "-c", "echo up in $(hostname); sleep 3600"]}))
    with running_sandboxer(default_image, config_file=False) as sandboxer:
        ctl = Ctl("vmm", sandboxer.listen, str(tmp_path / "ctl"), images, "streaming")
        pod, ctr = ctl.out("run", _pod_config(tmp_path, tag), str(ctr_cfg), timeout=180).split()
        info = json.loads(ctl.out("inspectp", pod))["info"]
        with open(f"/proc/{info['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        assert argv[argv.index(b"-kernel") + 1] == os.path.join(DEFAULT_OUTDIR, "vmlinux.bin").encode()
        expected = "kvm" if probe_kvm().usable else "tcg"
        assert argv[argv.index(b"-accel") + 1].split(b",")[0] == expected.encode()
        with open(sandboxer.log) as f:
            decisions = [line for line in f if "accel auto -> " in line]
        assert len(decisions) == 1 and f"accel auto -> {expected}: " in decisions[0]
        wait_for(lambda: ctl("logs", ctr).stdout == f"up in dflt-{tag}\n".encode(), 60)
        assert ctl("exec", ctr, "--", "sh", "-c", "exit 7", check=False, timeout=120).returncode == 7
        ctl("rm", ctr, timeout=120)
        ctl("rmp", pod, timeout=120)
        assert_nothing_left(sandboxer, pod, info["netnsPath"], [str(tmp_path / "ctl")], f"kuasar-e2e-dflt-{tag}")


def test_explicit_kvm_that_cannot_work_fails_start_naming_the_key(guest_image, images, tmp_path):
    probe = probe_kvm()
    if probe.usable:
        pytest.skip("KVM runs stock guests here, so a kvm setting that cannot work cannot exist on this machine")
    tag = uuid.uuid4().hex[:6]
    with running_sandboxer(guest_image, accel='"kvm"') as sandboxer:
        ctl = Ctl("vmm", sandboxer.listen, str(tmp_path / "ctl"), images, "streaming")
        failed = ctl("runp", _pod_config(tmp_path, tag), check=False, timeout=120)
        assert failed.returncode != 0
        message = failed.stderr.decode()
        assert '[hypervisor].accel = "kvm" cannot work on this host' in message and probe.reason in message
        assert ctl.out("pods", "-q") == ""

        def leftovers() -> list[str]:
            qemus = set(pids_with("qemu-system")) & set(pids_with(sandboxer.work))
            pods = [d for d in os.listdir(sandboxer.dir) if len(d) == 64] if os.path.isdir(sandboxer.dir) else []
            parent = "kuasar-e2e-dflt-" + tag
            cgroups = [f"cgroup {h}/{parent}/{c}" for h in os.listdir("/sys/fs/cgroup")
                       if os.path.isdir(os.path.join("/sys/fs/cgroup", h, parent))
                       for c in os.listdir(os.path.join("/sys/fs/cgroup", h, parent))
                       if os.path.isdir(os.path.join("/sys/fs/cgroup", h, parent, c))]
            return [f"qemu {p}" for p in qemus] + [f"pod dir {d}" for d in pods] + cgroups
        assert_gone(leftovers)
