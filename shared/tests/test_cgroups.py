"""cgroups: v2 and v1 code paths on fake trees, and v1 for real under /sys/fs/cgroup."""
from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest

from kuasar_shared import process
from kuasar_shared.cgroups import Cgroup, CgroupV1, CgroupV2, cgroup_mode
from kuasar_shared.errors import InvalidArgument, NotFound

RESOURCES = {"memory": {"limit": 256 * 1024 * 1024, "reservation": 64 * 1024 * 1024, "swap": 512 * 1024 * 1024},
             "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
             "pids": {"limit": 64}}


def fake_v2(root) -> None:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cgroup.procs").write_text("1\n")


def test_mode_detection(tmp_path) -> None:
    fake_v2(tmp_path / "v2")
    (tmp_path / "v1").mkdir()
    assert cgroup_mode(str(tmp_path / "v2")) == "v2"
    assert cgroup_mode(str(tmp_path / "v1")) == "v1"
    assert isinstance(Cgroup.open("a/b", str(tmp_path / "v2")), CgroupV2)
    assert isinstance(Cgroup.open("a/b", str(tmp_path / "v1")), CgroupV1)


@pytest.mark.parametrize("path", ["", "/", "../x", "a/../../b", "a/./b", "a\0b"])
def test_bad_paths(tmp_path, path: str) -> None:
    with pytest.raises(InvalidArgument):
        Cgroup.open(path, str(tmp_path))


def test_v2_create_enables_controllers_and_applies_limits(tmp_path) -> None:
    root = tmp_path / "cg"
    fake_v2(root)
    cg = Cgroup.open("/kuasar-test/pod1", str(root))
    cg.create()
    assert cg.owned_depth == 2 and cg.exists()
    assert (root / "cgroup.subtree_control").read_text() == "+cpuset +cpu +memory +pids"
    pod = root / "kuasar-test" / "pod1"
    for name in ("memory.swap.max",):
        (pod / name).write_text("max")
    cg.set_resources(RESOURCES)
    assert (pod / "memory.max").read_text() == str(256 << 20)
    assert (pod / "memory.low").read_text() == str(64 << 20)
    assert (pod / "memory.swap.max").read_text() == str(256 << 20)
    assert (pod / "cpu.max").read_text() == "50000 100000"
    assert (pod / "cpu.weight").read_text() == str(1 + ((512 - 2) * 9999) // 262142)
    assert (pod / "cpuset.cpus").read_text() == "0"
    assert (pod / "pids.max").read_text() == "64"
    cg.set_resources({"memory": {"limit": -1}, "cpu": {"quota": -1}, "pids": {"limit": 0}})
    assert (pod / "memory.max").read_text() == "max"
    assert (pod / "cpu.max").read_text() == "max 100000"
    assert (pod / "pids.max").read_text() == "max"


def test_v2_stats_pids_and_delete(tmp_path) -> None:
    root = tmp_path / "cg"
    fake_v2(root)
    (root / "existing").mkdir()
    cg = CgroupV2("existing/pod1", str(root))
    cg.create()
    assert cg.owned_depth == 1
    pod = root / "existing" / "pod1"
    (pod / "cpu.stat").write_text("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 0\n")
    (pod / "memory.current").write_text("4096\n")
    (pod / "memory.max").write_text("max\n")
    (pod / "memory.peak").write_text("8192\n")
    (pod / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 0\n")
    (pod / "memory.stat").write_text("anon 100\nfile 200\ninactive_file 50\n")
    (pod / "pids.current").write_text("2\n")
    (pod / "pids.max").write_text("64\n")
    stats = cg.stats()
    assert (stats.cpu_total_ns, stats.cpu_user_ns, stats.cpu_kernel_ns) == (1_500_000, 1_000_000, 500_000)
    assert (stats.memory_usage, stats.memory_limit, stats.memory_max_usage, stats.memory_failcnt) == (4096, 0, 8192, 3)
    assert (stats.memory_rss, stats.memory_cache, stats.memory_total_inactive_file) == (100, 200, 50)
    assert (stats.pids_current, stats.pids_limit) == (2, 64)
    cg.add_pid(4242)
    assert (pod / "cgroup.procs").read_text() == "4242"
    (pod / "child").mkdir()
    (pod / "child" / "cgroup.procs").write_text("77\n")
    assert cg.pids() == [77, 4242]
    cg.delete()
    assert not pod.exists()
    assert (root / "existing").is_dir()  # found, not created: kept
    assert (root / "existing" / "cgroup.procs").read_text() == "4242"  # processes moved to the parent
    cg.delete()  # idempotent
    with pytest.raises(NotFound):
        cg.stats()
    with pytest.raises(NotFound):
        cg.set_resources(RESOURCES)
    with pytest.raises(NotFound):
        cg.add_pid(1)


def test_v2_delete_removes_created_parents_but_not_shared_ones(tmp_path) -> None:
    root = tmp_path / "cg"
    fake_v2(root)
    a = Cgroup.open("kuasar/a", str(root))
    b = Cgroup.open("kuasar/b", str(root))
    a.create()
    b.create()
    assert (a.owned_depth, b.owned_depth) == (2, 1)
    a.delete()
    assert (root / "kuasar").is_dir()  # still holds b
    Cgroup.open("kuasar/b", str(root), owned_depth=2).delete()
    assert not (root / "kuasar").exists()


def fake_v1(root) -> None:
    for name in ("cpu", "cpuacct", "cpuset", "memory", "pids", "systemd", "unified"):
        (root / name).mkdir(parents=True)
        (root / name / "cgroup.procs").write_text("")
    (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    os.symlink("cpu", root / "cpu,cpuacct")


def test_v1_fake_tree_limits_and_stats(tmp_path) -> None:
    root = tmp_path / "cg"
    fake_v1(root)
    cg = Cgroup.open("kuasar/pod1", str(root))
    assert isinstance(cg, CgroupV1)
    assert sorted(os.path.basename(h) for h in cg.dirs()) == ["cpu", "cpuacct", "cpuset", "memory", "pids", "systemd"]
    cg.create()
    cg.set_resources(RESOURCES)
    pod = lambda c, f: (root / c / "kuasar" / "pod1" / f).read_text()  # noqa: E731
    assert pod("memory", "memory.limit_in_bytes") == str(256 << 20)
    assert pod("memory", "memory.soft_limit_in_bytes") == str(64 << 20)
    assert pod("cpu", "cpu.shares") == "512"
    assert pod("cpu", "cpu.cfs_quota_us") == "50000" and pod("cpu", "cpu.cfs_period_us") == "100000"
    assert pod("cpuset", "cpuset.cpus") == "0"
    assert pod("pids", "pids.max") == "64"
    (root / "cpuacct" / "kuasar" / "pod1" / "cpuacct.usage").write_text("123456\n")
    (root / "cpuacct" / "kuasar" / "pod1" / "cpuacct.stat").write_text("user 2\nsystem 1\n")
    (root / "memory" / "kuasar" / "pod1" / "memory.stat").write_text("rss 10\ncache 20\ntotal_rss 11\n"
                                                                      "total_cache 21\ntotal_inactive_file 5\n")
    stats = cg.stats()
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    assert (stats.cpu_total_ns, stats.cpu_user_ns, stats.cpu_kernel_ns) == (123456, 2 * tick, tick)
    assert (stats.memory_limit, stats.memory_rss, stats.memory_cache) == (256 << 20, 11, 21)
    assert stats.pids_limit == 64
    cg.delete()
    assert not any((root / c / "kuasar").exists() for c in ("cpu", "memory", "pids", "systemd"))


REAL = "/sys/fs/cgroup"


def _real_v1() -> bool:
    return os.geteuid() == 0 and cgroup_mode(REAL) == "v1" and os.path.isdir(os.path.join(REAL, "memory"))


@pytest.mark.skipif(not _real_v1(), reason="needs root and a cgroup v1 host")
@pytest.mark.asyncio
async def test_real_v1_lifecycle() -> None:
    top = "kuasar-test-%s" % uuid.uuid4().hex[:12]
    cg = Cgroup.open("%s/pod1" % top, REAL)
    proc = None
    try:
        cg.create()
        assert cg.owned_depth == 2
        cg.set_resources(RESOURCES)
        assert open(os.path.join(REAL, "memory", top, "pod1", "memory.limit_in_bytes")).read().strip() == \
            str(256 << 20)
        # allocates and burns CPU only after it was moved in (v1 does not move old charges)
        code = "import time; time.sleep(0.2); b = bytearray(16 << 20); sum(range(3000000)); time.sleep(30)"
        proc = process.spawn([sys.executable, "-c", code])
        cg.add_pid(proc.pid)
        assert cg.pids() == [proc.pid]
        await asyncio.sleep(1.0)
        stats = cg.stats()
        assert stats.cpu_total_ns > 0 and stats.memory_usage >= 16 << 20 and stats.memory_rss > 0
        assert stats.memory_limit == 256 << 20 and stats.pids_current == 1 and stats.pids_limit == 64
        cg.delete()  # moves the process out, removes pod1 and the parent we created
        assert not cg.exists()
        assert not any(os.path.exists(os.path.join(REAL, h, top)) for h in os.listdir(REAL))
        os.kill(proc.pid, 0)  # still alive, just moved
    finally:
        if proc is not None:
            proc.kill()
            await proc.wait()
        Cgroup.open("%s/pod1" % top, REAL, owned_depth=2).delete()
