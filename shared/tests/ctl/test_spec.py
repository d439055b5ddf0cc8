"""The container OCI spec kuasar-ctl builds matches what containerd's CRI plugin builds."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from kuasar_shared.ctl import config, spec
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.testing.traces import ENGINE, default_conformance_dir

CONF = os.path.join(default_conformance_dir(str(Path(__file__).resolve().parents[3])), ENGINE)
PID = 4242


def _load(tmp_path, pod_name: str, ctr_name: str):
    pod = config.load_pod_config(os.path.join(CONF, "inputs", pod_name))
    ctr = config.load_container_config(os.path.join(CONF, "inputs", ctr_name))
    # keep hostPath sources inside the test directory (containerd creates missing ones)
    mounts = tuple(dataclasses.replace(m, host_path=str(tmp_path / "hostdir")) for m in ctr.mounts)
    return pod, dataclasses.replace(ctr, mounts=mounts)


def _build(pod, ctr, **kw):
    inputs = spec.SpecInputs(container_id="c" * 64, sandbox_id="s" * 64, sandbox_pid=PID,
                             image_name="docker.io/library/busybox:latest", **kw)
    return spec.build_container_spec(ctr, pod, inputs)


def _exec_process_from_trace(flow: str) -> dict:
    with open(os.path.join(CONF, flow, "calls.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("method") == "Exec":
                return rec["request_json"]["spec"]["@json"]
    raise AssertionError("no Exec in trace")


@pytest.mark.parametrize("flow,pod_name,ctr_name", [("a_runc_fifo", "pod-a.json", "ctr-a.json"),
                                                    ("b_hostnet_sharedpid", "pod-b.json", "ctr-b.json"),
                                                    ("c_vmm_streaming", "pod-c.json", "ctr-c.json")])
def test_exec_process_equals_containerds(tmp_path, flow, pod_name, ctr_name):
    pod, ctr = _load(tmp_path, pod_name, ctr_name)
    built = spec.exec_process_spec(_build(pod, ctr), ["echo", "hi"])
    assert built == _exec_process_from_trace(flow)


def test_pod_network_private_pid(tmp_path):
    pod, ctr = _load(tmp_path, "pod-a.json", "ctr-a.json")
    s = _build(pod, ctr)
    assert s["linux"]["namespaces"] == [
        {"type": "pid"},
        {"type": "ipc", "path": f"/proc/{PID}/ns/ipc"},
        {"type": "uts", "path": f"/proc/{PID}/ns/uts"},
        {"type": "mount"},
        {"type": "network", "path": f"/proc/{PID}/ns/net"},
    ]
    assert "hostname" not in s
    assert s["linux"]["cgroupsPath"] == "/conformance-a/" + "c" * 64
    assert s["root"] == {"path": "rootfs"}


def test_host_network_shared_pid(tmp_path):
    pod, ctr = _load(tmp_path, "pod-b.json", "ctr-b.json")
    s = _build(pod, ctr)
    types = [(n["type"], n.get("path")) for n in s["linux"]["namespaces"]]
    assert types == [("pid", f"/proc/{PID}/ns/pid"), ("ipc", f"/proc/{PID}/ns/ipc"),
                     ("uts", f"/proc/{PID}/ns/uts"), ("mount", None)]
    assert s["linux"]["cgroupsPath"].startswith("/conformance-b/")


def test_mounts_like_containerd(tmp_path):
    pod, ctr = _load(tmp_path, "pod-a.json", "ctr-a.json")
    extra = (config.MountSpec("/etc/hostname", str(tmp_path / "hostname")),
             config.MountSpec("/etc/hosts", str(tmp_path / "hosts")))
    for m in extra:
        open(m.host_path, "w").close()
    s = _build(pod, ctr, extra_mounts=extra)
    dests = [m["destination"] for m in s["mounts"]]
    assert dests == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup",
                     "/data", "/etc/hostname", "/etc/hosts"]
    cgroup = s["mounts"][6]
    assert cgroup == {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                      "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
    data = s["mounts"][7]
    assert data == {"destination": "/data", "type": "bind", "source": str(tmp_path / "hostdir"),
                    "options": ["rbind", "rprivate", "ro"]}
    assert os.path.isdir(tmp_path / "hostdir")  # created like containerd does
    assert "/run" not in dests


def test_config_mount_overrides_defaults(tmp_path):
    pod, ctr = _load(tmp_path, "pod-a.json", "ctr-a.json")
    ctr = dataclasses.replace(ctr, mounts=(config.MountSpec("/dev", str(tmp_path / "dev")),))
    dests = [m["destination"] for m in _build(pod, ctr)["mounts"]]
    assert dests == ["/proc", "/sys", "/sys/fs/cgroup", "/dev"]


def test_resources_annotations_oom(tmp_path):
    pod, ctr = _load(tmp_path, "pod-a.json", "ctr-a.json")
    s = _build(pod, ctr, oom_score_adj_floor=-500, swap_accounting=True)
    assert s["linux"]["resources"] == {"devices": [{"allow": False, "access": "rwm"}],
                                       "cpu": {"shares": 512, "quota": 50000, "period": 100000},
                                       "memory": {"limit": 134217728, "swap": 134217728}}
    assert s["process"]["oomScoreAdj"] == 0
    assert _build(pod, ctr, oom_score_adj_floor=300)["process"]["oomScoreAdj"] == 300
    ann = s["annotations"]
    assert ann["io.kubernetes.cri.container-type"] == "container"
    assert ann["io.kubernetes.cri.sandbox-id"] == "s" * 64
    assert ann["io.kubernetes.cri.sandbox-name"] == "conf-a-pod"
    assert "example.com/ctr-note" not in ann  # containerd passes no unlisted config annotations


def test_inherits_pod_namespaces_and_image_defaults(tmp_path):
    pod = config.load_pod_config(os.path.join(CONF, "inputs", "pod-b.json"))
    ctr = config.ContainerConfig(name="x", image="busybox")
    s = _build(pod, ctr)
    assert [n["type"] for n in s["linux"]["namespaces"]] == ["pid", "ipc", "uts", "mount"]
    assert s["process"]["args"] == ["sh"] and s["process"]["cwd"] == "/"
    assert "cgroupsPath" in s["linux"]


def test_no_cgroup_parent_means_no_cgroups_path(tmp_path):
    pod = config.load_pod_config(os.path.join(CONF, "inputs", "pod-a.json"))
    pod.linux.cgroup_parent = ""
    assert "cgroupsPath" not in _build(pod, config.ContainerConfig(name="x", image="b"))["linux"]


def test_unsupported_settings_are_refused():
    pod = config.load_pod_config(os.path.join(CONF, "inputs", "pod-a.json"))
    with pytest.raises(InvalidArgument, match="privileged"):
        _build(pod, config.ContainerConfig(name="x", image="b", privileged=True))
    with pytest.raises(InvalidArgument, match="exec needs a command"):
        spec.exec_process_spec({"process": {}}, [])


def test_capability_add_drop():
    pod = config.load_pod_config(os.path.join(CONF, "inputs", "pod-a.json"))
    ctr = config.ContainerConfig(name="x", image="b", add_capabilities=("NET_ADMIN",),
                                 drop_capabilities=("CAP_KILL",))
    caps = _build(pod, ctr)["process"]["capabilities"]["bounding"]
    assert "CAP_NET_ADMIN" in caps and "CAP_KILL" not in caps
