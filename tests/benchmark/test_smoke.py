"""The benchmark suite with tiny N (what CI runs): every side works, the JSON has its shape, numbers are sane.

Timing targets are never asserted here; the full run (`tox -e bench`) is a separate command.
"""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.e2e


def _sane_latency(lat: dict) -> None:
    assert lat["n"] >= 1
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"] < 60_000


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple:
    if os.geteuid() != 0:
        pytest.skip("the benchmark needs root (runc, mounts, cgroups)")
    for binary in ("runc", "containerd", "ctr", "containerd-shim-runc-v2"):
        if not shutil.which(binary):
            pytest.skip(f"{binary} is not installed (hack/setup.sh installs it)")
    out = tmp_path_factory.mktemp("bench")
    argv = [sys.executable, os.path.join(HERE, "run.py"), "--smoke", "--out", str(out)]
    if importlib.util.find_spec("matplotlib") is None:
        argv.append("--no-plots")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=110, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    with open(out / "results.json") as f:
        return json.load(f), out, "--no-plots" not in argv


def test_every_side_ran(smoke) -> None:
    results, _, _ = smoke
    assert results["smoke"] is True
    assert {"containerd-shim-runc-v2", "ctr run -d", "kuasar-runc"} <= set(results["sides"])
    for name, side in results["sides"].items():
        assert "error" not in side, f"{name}: {side.get('error')}"
    assert results["machine"]["cpus"] >= 1


def test_latencies_are_sane(smoke) -> None:
    results, _, _ = smoke
    for side in results["sides"].values():
        if "serial" in side:
            _sane_latency(side["serial"]["latency_ms"])
            assert len(side["serial"]["samples_ms"]) == side["serial"]["latency_ms"]["n"]
            assert all(v >= 0 for v in side["serial"]["cpu_per_start_ms"].values())
        for run in side["parallel"]:
            _sane_latency(run["latency_ms"])
            assert run["completion_ms"] >= run["latency_ms"]["max"] * 0.99


def test_memory_is_sane(smoke) -> None:
    results, _, _ = smoke
    for name in ("containerd-shim-runc-v2", "kuasar-runc"):
        rows = results["sides"][name]["memory"]
        assert [r["pods"] for r in rows] == results["plans"][name]["pods"]
        for row in rows:
            total = row["management"]["total"]
            assert 0 < total["pss_kb"] <= total["rss_kb"] < 4 * 1024 * 1024
    shims = results["sides"]["containerd-shim-runc-v2"]["memory"]
    assert [r["management"]["total"]["processes"] for r in shims] == [r["pods"] for r in shims]
    assert all(r["daemon"]["containerd"]["pss_kb"] > 0 for r in shims)
    ours = results["sides"]["kuasar-runc"]["memory"]
    assert all({"runc-sandboxer", "runc-task"} <= set(r["management"]) for r in ours)
    assert set(results["ratios"]) >= {"pss_1", "serial_p50"}


def test_floor_and_start_steps(smoke) -> None:
    """Issue 19's measurements: where the floor's memory goes, and a runc start step by step."""
    results, out, _ = smoke
    runc = results["sides"]["kuasar-runc"]
    floor = runc["floor"]
    assert {"runc-sandboxer", "runc-task", "task front", "sandbox-parent"} <= set(floor["processes"])
    assert floor["pss_kb"] == pytest.approx(sum(p["rollup_kb"]["Pss"] for p in floor["processes"].values()), rel=0.05)
    for info in floor["processes"].values():
        assert sum(info["pss_by_mapping_kb"].values()) == pytest.approx(info["rollup_kb"]["Pss"], rel=0.05)
    for program in ("runc-sandboxer", "runc-task"):
        imports = floor["imports"][program]
        assert imports["private_kb"] > 1024 and imports["stages"][-1]["import"].startswith("kuasar_runc")
    steps = runc["start_steps"]
    assert steps["rounds"] == results["plans"]["kuasar-runc"]["serial"], steps.get("error")
    p50 = steps["p50_ms"]
    for step in ("pod: holder spawn (round trip to the sandbox-parent helper)", "container: runc create",
                 "container: runc start", "bare runc create + start", "pod: pod state writes"):
        assert p50[step] > 0, step
    assert p50["container: runc create"] < p50["container total (task Create + Start, in process)"]
    engine_steps = set(runc["serial"]["steps_p50_ms"])
    assert {"of which Sandbox API Create + Start", "of which task Create + Start"} <= engine_steps
    text = (out / "RESULTS.md").read_text()
    assert "## runc control plane against the shim (issue 19)" in text and "step by step" in text


def test_report_files(smoke) -> None:
    _, out, plots = smoke
    text = (out / "RESULTS.md").read_text()
    assert "## Start latency" in text and "## Management-plane memory" in text
    if plots:
        assert (out / "start-cdf.png").stat().st_size > 0 and (out / "memory-vs-pods.png").stat().st_size > 0


def test_nothing_left_behind(smoke) -> None:
    assert not glob.glob("/sys/fs/cgroup/*/kuasar-bench-*")
    assert not glob.glob("/tmp/kbench-*")
    with open("/proc/self/mountinfo") as f:
        assert "/kbench-" not in f.read()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read()
        except OSError:
            continue
        assert b"/kbench-" not in argv, argv
