"""The CRI benchmark (bench_cri.py, cri.py): its images are valid OCI archives, and a tiny run through a real
containerd 2.x + crictl measures both sides and leaves nothing behind."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import cri  # noqa: E402
import kuasar  # noqa: E402


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_oci_archive_is_a_named_image_whose_digests_hold() -> None:
    image = cri.CriImage("docker.io/kbench/x:7", (("bin/tool", b"\x7fELF..."), ("bin/sh", "->tool")), ("/bin/tool",))
    files = _members(cri.oci_archive(image, "amd64"))
    index = json.loads(files["index.json"])
    (entry,) = index["manifests"]
    assert entry["annotations"]["io.containerd.image.name"] == "docker.io/kbench/x:7"
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}

    def blob(descriptor: dict) -> bytes:
        data = files["blobs/sha256/" + descriptor["digest"].split(":")[1]]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
        assert len(data) == descriptor["size"]
        return data

    manifest = json.loads(blob(entry))
    config = json.loads(blob(manifest["config"]))
    layer = blob(manifest["layers"][0])
    assert config["rootfs"]["diff_ids"] == [manifest["layers"][0]["digest"]]
    assert config["config"]["Cmd"] == ["/bin/tool"]
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        assert tar.extractfile("bin/tool").read() == b"\x7fELF..."  # type: ignore[union-attr]
        assert tar.getmember("bin/sh").issym() and tar.getmember("bin/sh").linkname == "tool"


def test_config_names_the_baseline_and_each_sandboxer(tmp_path) -> None:
    config = cri.CriNode(str(tmp_path), ["runc", "vmm"]).config()
    assert 'runtime_type = "io.containerd.runc.v2"' in config and 'sandboxer = "podsandbox"' in config
    for sandbox_type in ("runc", "vmm"):
        assert f"runtimes.kuasar-{sandbox_type}]" in config and f"[proxy_plugins.{sandbox_type}]" in config
        assert f'address = "{tmp_path}/{sandbox_type}-sandboxer.sock"' in config
    assert config.count('io_type = "streaming"') == 1


@pytest.mark.e2e
def test_tiny_run_through_containerd_and_crictl(tmp_path) -> None:
    reason = cri.missing_tools()
    if reason:
        pytest.skip(f"containerd 2.x and crictl are built from GitHub sources by the critest kit, which this "
                    f"machine's registries do not carry, so they cannot exist on this machine ({reason})")
    if os.geteuid() != 0:
        pytest.skip("the benchmark needs root (runc, mounts, cgroups)")
    out, work = tmp_path / "cri.json", str(tmp_path / "w")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_cri.py"), "--types", "runc,wasm", "--serial",
                           "2", "--parallel", "2", "--pods", "1,3", "--steps", "2", "--out", str(out), "--work", work],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads(out.read_text())
    base = result["sides"][cri.CriShimSide.name]
    assert [row["management"]["containerd-shim-runc-v2"]["processes"] for row in base["memory"]] == [1, 3]
    for sandbox_type in ("runc", "wasm"):
        ours = result["sides"][f"kuasar-{sandbox_type} (CRI)"]
        assert ours["serial"]["latency_ms"]["n"] == 2 and ours["parallel"][0]["n"] == 2
        assert {"serial_p50", "pss_1", "pss_3", "pss_infra_3"} <= set(result["ratios"][sandbox_type])
    assert "### wasm" in proc.stdout and "runtime PSS at 3 pods" in proc.stdout
    steps = result["sides"]["kuasar-runc (CRI)"]["steps"]
    assert steps["engine"]["rounds"] == 2 == len(steps["engine"]["samples_ms"])
    assert all(row[kuasar.SANDBOX_STEP] > 0 and row[kuasar.TASK_STEP] > 0 and row[cri.BARE_STEP] > 0
               for row in steps["engine"]["samples_ms"])
    assert steps["breakdown"]["rounds"] == 2 and steps["breakdown"]["p50_ms"]["bare runc create + start"] > 0
    assert "pod: Sandbox API Create + Start" in proc.stdout and "steps" not in result["sides"]["kuasar-wasm (CRI)"]
    assert "containerd/v2 v2." in result["versions"]["containerd"]
    assert not os.path.exists(work)
    with open("/proc/self/mountinfo") as handle:
        assert work not in handle.read()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                assert work.encode() not in handle.read(), f"process {pid} of the run is still there"
        except FileNotFoundError:
            pass
