"""The generated pause program and the pod's root-container bundle."""
from __future__ import annotations

import json
import os



from kuasar_quark_sandboxer.pause import PAUSE_PATH, write_sandbox_bundle


def test_sandbox_bundle(tmp_path) -> None:
    bundle = str(tmp_path / "sandbox")
    spec = write_sandbox_bundle(bundle, "pod1", hostname="h", netns="/var/run/netns/x", cgroups_path="/p/pod1")
    assert json.load(open(os.path.join(bundle, "config.json"))) == spec
    assert os.access(os.path.join(bundle, "rootfs", PAUSE_PATH.lstrip("/")), os.X_OK)
    assert spec["annotations"] == {"io.kubernetes.cri.container-type": "sandbox",
                                   "io.kubernetes.cri.sandbox-id": "pod1"}
    assert {"type": "network", "path": "/var/run/netns/x"} in spec["linux"]["namespaces"]
    assert spec["linux"]["cgroupsPath"] == "/p/pod1" and spec["hostname"] == "h"
    assert spec["root"]["readonly"] is True and spec["process"]["args"] == [PAUSE_PATH]
    plain = write_sandbox_bundle(str(tmp_path / "other"), "pod2")
    assert {"type": "network"} in plain["linux"]["namespaces"] and "cgroupsPath" not in plain["linux"]
