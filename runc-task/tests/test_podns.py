"""Joining a pod's pinned namespaces and cgroup parent from a container spec."""
from __future__ import annotations

import json
import os

from kuasar_shared.mounts import MNT_DETACH, mount, umount
from kuasar_runc_task.podns import SANDBOX_ID_ANNOTATION, default_cgroups_path, join_pod_namespaces, sandbox_id_of


def _spec(pid: int) -> dict:
    return {"annotations": {SANDBOX_ID_ANNOTATION: "pod1"},
            "linux": {"namespaces": [{"type": "network", "path": f"/proc/{pid}/ns/net"},
                                     {"type": "ipc", "path": f"/proc/{pid}/ns/ipc"},
                                     {"type": "uts", "path": "/proc/0/ns/uts"}, {"type": "pid"}]}}


def test_sandbox_id_from_annotation_or_bundle_file(tmp_path) -> None:
    assert sandbox_id_of(_spec(0), str(tmp_path)) == "pod1"
    (tmp_path / "sandbox").write_text("pod2\n")
    assert sandbox_id_of({}, str(tmp_path)) == "pod2"
    assert sandbox_id_of({"annotations": {SANDBOX_ID_ANNOTATION: "../bad"}}, "/nonexistent") == ""


def test_pid_zero_and_same_namespace_paths_are_rewritten(tmp_path) -> None:
    ns_dir = tmp_path / "pod1" / "ns"
    ns_dir.mkdir(parents=True)
    for name in ("uts", "ipc", "net"):
        (ns_dir / name).write_text("")
    # pin this process's network namespace the way runc-sandboxer pins a holder's
    mount(f"/proc/{os.getpid()}/ns/net", str(ns_dir / "net"), "", ["bind"])
    try:
        spec = _spec(os.getpid())
        done = join_pod_namespaces(spec, str(tmp_path), "pod1")
    finally:
        umount(str(ns_dir / "net"), MNT_DETACH)
    paths = {ns["type"]: ns.get("path", "") for ns in spec["linux"]["namespaces"]}
    assert sorted(done) == ["network", "uts"]
    assert paths["uts"] == str(ns_dir / "uts")
    assert paths["network"] == str(ns_dir / "net")
    assert paths["ipc"] == f"/proc/{os.getpid()}/ns/ipc"  # not the pinned namespace: untouched
    assert paths["pid"] == ""
    assert join_pod_namespaces(_spec(0), str(tmp_path), "") == []
    assert join_pod_namespaces(_spec(0), "", "pod1") == []


def test_default_cgroups_path_from_pod_record(tmp_path) -> None:
    (tmp_path / "pod1").mkdir()
    (tmp_path / "pod1" / "sandbox.json").write_text(json.dumps({"cgroup_parent": "/kubepods/pod1/"}))
    assert default_cgroups_path({}, str(tmp_path), "pod1", "c1") == "/kubepods/pod1/c1"
    assert default_cgroups_path({"linux": {"cgroupsPath": "/x"}}, str(tmp_path), "pod1", "c1") == ""
    assert default_cgroups_path({}, str(tmp_path), "missing", "c1") == ""
    (tmp_path / "pod1" / "sandbox.json").write_text("{torn")
    assert default_cgroups_path({}, str(tmp_path), "pod1", "c1") == ""
