"""kuasar_shared.oci.pod: pod id from a spec or bundle, pod cgroup parent, container cgroups path."""
from __future__ import annotations

import json
import os

from kuasar_shared.oci.pod import SANDBOX_ID_ANNOTATION, container_cgroups_path, pod_cgroup_parent, sandbox_id_of


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
