"""kuasar_shared.oci.pod: pod id from a spec or bundle, pod cgroup parent, container cgroups path."""
from __future__ import annotations

import json
import os

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.mounts import mount, umount
from kuasar_shared.oci.pod import (SANDBOX_ID_ANNOTATION, add_pod_mounts, container_cgroups_path, pod_cgroup_parent,
                                   sandbox_id_of)


def test_sandbox_id_from_annotation_then_bundle_file(tmp_path) -> None:
    assert sandbox_id_of({"annotations": {SANDBOX_ID_ANNOTATION: "pod-1"}}, str(tmp_path)) == "pod-1"
    assert sandbox_id_of({}, str(tmp_path)) == ""
    (tmp_path / "sandbox").write_text("pod-2\n")
    assert sandbox_id_of({}, str(tmp_path)) == "pod-2"
    assert sandbox_id_of({"annotations": {SANDBOX_ID_ANNOTATION: "../escape"}}, str(tmp_path)) == ""


def test_cgroups_path_explicit_then_pod_parent(tmp_path) -> None:
    pods = str(tmp_path)
    assert container_cgroups_path({"linux": {"cgroupsPath": "/a/b"}}, pods, "p", "c") == "/a/b"
    assert container_cgroups_path({}, pods, "p", "c") == ""
    os.makedirs(tmp_path / "p")
    (tmp_path / "p" / "sandbox.json").write_text(json.dumps({"cgroup_parent": "/kuasar/p/"}))
    assert pod_cgroup_parent(pods, "p") == "/kuasar/p/"
    assert container_cgroups_path({"linux": {}}, pods, "p", "c") == "/kuasar/p/c"
    (tmp_path / "p" / "sandbox.json").write_text("{torn")
    assert pod_cgroup_parent(pods, "p") == ""


def test_add_pod_mounts_binds_the_pod_files_and_shares_dev_shm(tmp_path) -> None:
    pod = tmp_path / "pod"
    os.makedirs(pod / "shm")
    for name in ("hostname", "resolv.conf"):
        (pod / name).write_text(name)
    tmpfs = {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid"]}
    own_hosts = {"destination": "/etc/hosts", "type": "bind", "source": "/elsewhere", "options": ["rbind"]}
    spec = {"root": {"readonly": True}, "mounts": [dict(tmpfs), own_hosts]}
    # no hosts file in the pod, and the spec mounts its own: neither is touched; shm is no mount yet
    assert add_pod_mounts(spec, str(pod)) == ["/etc/hostname", "/etc/resolv.conf"]
    assert spec["mounts"][:2] == [tmpfs, own_hosts]
    assert spec["mounts"][2] == {"destination": "/etc/hostname", "type": "bind", "source": str(pod / "hostname"),
                                 "options": ["rbind", "rprivate", "ro"]}
    mount("shm", str(pod / "shm"), "tmpfs")
    try:
        spec = {"mounts": [dict(tmpfs)]}
        assert add_pod_mounts(spec, str(pod)) == ["/etc/hostname", "/etc/resolv.conf", "/dev/shm"]
        assert spec["mounts"][0] == {"destination": "/dev/shm", "type": "bind", "source": str(pod / "shm"),
                                     "options": ["rbind", "rprivate", "rw"]}
        host_ipc = {"mounts": [{"destination": "/dev/shm", "type": "bind", "source": "/dev/shm"}]}
        add_pod_mounts(host_ipc, str(pod))
        assert host_ipc["mounts"][0]["source"] == "/dev/shm"
    finally:
        umount(str(pod / "shm"))
    with pytest.raises(InvalidArgument):
        add_pod_mounts({"mounts": {}}, str(pod))
