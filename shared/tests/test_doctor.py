"""doctor: the shared host checks on crafted inputs, and ``kuasar-ctl doctor`` on this very machine."""
from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

from kuasar_shared.ctl.doctor import installed_types, run_doctor
from kuasar_shared.doctor import (Finding, Sandboxer, Status, binary_version, cgroup_findings,
                                  containerd_findings, isulad_findings, sandboxer_options, socket_findings)

V1 = """\
25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 25 0:25 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:26 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
"""


def _mountinfo(tmp_path, text: str) -> str:
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return str(path)


def test_cgroup_layouts(tmp_path) -> None:
    hybrid = cgroup_findings(_mountinfo(tmp_path, V1))
    assert hybrid[0] == Finding(Status.OK, "cgroups", "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified)")
    assert hybrid[1].status is Status.OK and "memory (/sys/fs/cgroup/memory)" in hybrid[1].detail
    v1 = cgroup_findings(_mountinfo(tmp_path, "\n".join(ln for ln in V1.splitlines() if "cgroup2" not in ln) + "\n"))
    assert v1[0].detail == "v1 (one hierarchy per controller under /sys/fs/cgroup)"
    no_pids = cgroup_findings(_mountinfo(tmp_path, "\n".join(ln for ln in V1.splitlines() if "pids" not in ln)))
    assert no_pids[1].status is Status.FAIL and no_pids[1].detail == "missing: pids"
    assert cgroup_findings(_mountinfo(tmp_path, V1.splitlines()[0] + "\n"))[0].status is Status.FAIL


def test_sysconfig_options_and_defaults(tmp_path) -> None:
    (tmp_path / "kuasar-vmm").write_text("# comment\n"
                                         "OPTIONS='--listen /run/x.sock --dir /run/x --config /etc/c.toml'\n")
    assert sandboxer_options("vmm", str(tmp_path)) == Sandboxer("vmm", "/run/x.sock", "/run/x", "/etc/c.toml")
    assert sandboxer_options("runc", str(tmp_path)) == Sandboxer("runc", "/run/runc-sandboxer.sock",
                                                                 "/run/kuasar-runc", None)


def test_containerd_config_must_name_the_socket_and_a_handler(tmp_path) -> None:
    ours = Sandboxer("runc", "/run/runc-sandboxer.sock", "/run/kuasar-runc", None)
    path = tmp_path / "config.toml"
    assert containerd_findings(ours, str(path))[0].status is Status.WARN
    good = """
[proxy_plugins.runc]
  type = "sandbox"
  address = "/run/runc-sandboxer.sock"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kuasar-runc]
  runtime_type = "io.containerd.kuasar-runc.v1"
  sandboxer = "runc"
"""
    path.write_text(good)
    assert containerd_findings(ours, str(path)) == [Finding(
        Status.OK, "containerd config", "proxy plugin 'runc' at /run/runc-sandboxer.sock, runtime handler kuasar-runc")]
    path.write_text(good.replace("/run/runc-sandboxer.sock", "/run/elsewhere.sock"))
    wrong = containerd_findings(ours, str(path))[0]
    assert wrong.status is Status.FAIL and "points at /run/elsewhere.sock" in wrong.detail
    path.write_text(good.split("[plugins.")[0])
    assert "not the sandboxer of any CRI runtime handler" in containerd_findings(ours, str(path))[0].detail
    path.write_text("[proxy_plugins\n")
    assert containerd_findings(ours, str(path))[0].status is Status.FAIL


def test_isulad_config(tmp_path) -> None:
    ours = Sandboxer("vmm", "/run/vmm-sandboxer.sock", "/run/kuasar-vmm", None)
    path = tmp_path / "daemon.json"
    assert isulad_findings(ours, str(path)) == []
    path.write_text('{"cri-sandboxers": {"kuasar-vmm": {"name": "vmm", "address": "/run/vmm-sandboxer.sock"}}}')
    assert isulad_findings(ours, str(path))[0].status is Status.OK
    path.write_text('{"cri-sandboxers": {}}')
    assert isulad_findings(ours, str(path))[0].status is Status.WARN


def test_socket_serving_stale_and_missing(tmp_path) -> None:
    path = str(tmp_path / "s.sock")
    sandboxer = Sandboxer("runc", path, str(tmp_path), None)
    assert socket_findings(sandboxer)[0].status is Status.WARN
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    try:
        assert socket_findings(sandboxer)[0] == Finding(Status.OK, "socket", "%s accepts connections" % path)
    finally:
        listener.close()
    stale = socket_findings(sandboxer)[0]
    assert stale.status is Status.FAIL and "stale" in stale.detail and stale.fix == "systemctl restart kuasar-runc"


def test_binary_version() -> None:
    found = binary_version("python", sys.executable, ("--version",))
    assert found.status is Status.OK and found.detail.startswith("Python 3.")
    assert binary_version("x", "no-such-binary-kuasar").status is Status.FAIL
    assert binary_version("false", "false", ()).status is Status.FAIL


def test_every_type_of_this_checkout_is_installed() -> None:
    assert set(installed_types()) == {"runc", "wasm", "quark", "vmm"}


def test_a_failing_check_makes_the_exit_status_1(tmp_path) -> None:
    (tmp_path / "kuasar-quark").write_text("OPTIONS='--config %s'\n" % (tmp_path / "missing.toml"))
    out = io.StringIO()
    assert run_doctor(["quark"], out, str(tmp_path)) == 1
    assert "fail  config" in out.getvalue() and "missing.toml" in out.getvalue()


def test_doctor_on_this_machine_names_its_accelerator_and_cgroups() -> None:
    from kuasar_vmm_sandboxer.hypervisors.qemu.accel import probe_kvm

    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "kuasar-ctl"), "doctor", "--type", "vmm"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    report = proc.stdout
    assert ("TCG will be used" in report) == (not probe_kvm().usable)
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    v1, v2 = " - cgroup cgroup " in mounts, " - cgroup2 " in mounts
    layout = "hybrid" if v1 and v2 else "v1" if v1 else "v2"
    assert "ok    cgroups" in report and layout + " (" in report
    assert report.rstrip().splitlines()[-1].startswith("summary: ")
