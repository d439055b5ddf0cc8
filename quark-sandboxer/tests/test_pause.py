"""The generated pause program and the pod's root-container bundle."""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import time

import pytest

from kuasar_shared.errors import InvalidArgument

from kuasar_quark_sandboxer.pause import PAUSE_PATH, pause_elf, write_sandbox_bundle


def test_elf_headers_per_machine() -> None:
    for machine, e_machine in (("x86_64", 0x3E), ("amd64", 0x3E), ("aarch64", 0xB7), ("arm64", 0xB7)):
        elf = pause_elf(machine)
        assert elf[:4] == b"\x7fELF" and elf[4] == 2 and int.from_bytes(elf[18:20], "little") == e_machine
        entry = int.from_bytes(elf[24:32], "little")
        assert entry == 0x400000 + 64 + 56
    with pytest.raises(InvalidArgument):
        pause_elf("mips")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="runs the x86_64 program")
def test_pause_program_waits_until_killed(tmp_path) -> None:
    path = tmp_path / "pause"
    path.write_bytes(pause_elf())
    path.chmod(0o755)
    proc = subprocess.Popen([str(path)])
    time.sleep(0.2)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(5) == -signal.SIGTERM


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
