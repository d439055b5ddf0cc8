"""mounts: real tmpfs/bind/overlay mounts as root, recursive unmount from mountinfo."""
from __future__ import annotations

import errno
import os

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.mounts import (MS, MountError, is_mountpoint, mount, mount_all, mountinfo, parse_options,
                                  umount, unmount_recursive)
from kuasar_shared.statefiles import PodStore
from kuasar_shared.values import Mount

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")


@pytest.fixture
def area(tmp_path):
    yield tmp_path
    unmount_recursive(str(tmp_path))


def test_parse_options() -> None:
    flags, prop, data = parse_options(["ro", "nosuid", "rbind", "rprivate", "size=1m", "lowerdir=/a:/b", "rw", "ro"])
    assert flags == MS.RDONLY | MS.NOSUID | MS.BIND | MS.REC
    assert prop == MS.PRIVATE | MS.REC
    assert data == "size=1m,lowerdir=/a:/b"
    assert parse_options(["defaults", "exec", "noexec", "suid"]) == (MS.NOEXEC, 0, "")


@root_only
def test_tmpfs_mount_is_mountpoint_and_umount(area) -> None:
    target = str(area / "t")
    os.mkdir(target)
    assert not is_mountpoint(target)
    mount("tmpfs", target, "tmpfs", ["size=1m", "mode=755"])
    assert is_mountpoint(target)
    entry = [m for m in mountinfo() if m.mountpoint == target][-1]
    assert entry.fstype == "tmpfs"
    umount(target)
    assert not is_mountpoint(target)


@root_only
def test_errors_name_the_target(area) -> None:
    with pytest.raises(MountError) as info:
        mount("tmpfs", str(area / "missing"), "tmpfs")
    assert info.value.errno == errno.ENOENT
    assert str(area / "missing") in str(info.value)
    with pytest.raises(MountError) as info:
        umount(str(area))
    assert info.value.errno == errno.EINVAL and str(area) in str(info.value)


@root_only
def test_readonly_bind(area) -> None:
    src, dst = area / "src", area / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "f").write_text("hello")
    mount(str(src), str(dst), "bind", ["rbind", "ro"])
    assert (dst / "f").read_text() == "hello"
    with pytest.raises(OSError) as info:
        (dst / "g").write_text("x")
    assert info.value.errno == errno.EROFS
    (src / "g").write_text("still writable at the source")


@root_only
def test_mount_all_overlay_and_sub_mounts(area) -> None:
    for d in ("lower", "upper", "work", "rootfs", "vol"):
        (area / d).mkdir()
    (area / "lower" / "bin").mkdir()
    (area / "lower" / "bin" / "sh").write_text("lower")
    (area / "vol" / "data").write_text("volume")
    rootfs = str(area / "rootfs")
    mounts = [
        Mount("overlay", "overlay", "", ("workdir=%s" % (area / "work"), "upperdir=%s" % (area / "upper"),
                                         "lowerdir=%s" % (area / "lower"), "index=off")),
        {"type": "bind", "source": str(area / "vol"), "destination": "/mnt/vol", "options": ["rbind", "ro"]},
        {"type": "tmpfs", "source": "tmpfs", "destination": "/dev/shm", "options": ["nosuid", "size=65536k"]},
    ]
    points = mount_all(mounts, rootfs)
    assert points == [rootfs, rootfs + "/mnt/vol", rootfs + "/dev/shm"]
    assert (area / "rootfs" / "bin" / "sh").read_text() == "lower"
    (area / "rootfs" / "new").write_text("upper")
    assert (area / "upper" / "new").read_text() == "upper"
    assert (area / "rootfs" / "mnt" / "vol" / "data").read_text() == "volume"
    assert unmount_recursive(rootfs) == 3
    assert not any(m.mountpoint.startswith(rootfs) for m in mountinfo())


@root_only
def test_mount_all_rolls_back_on_failure(area) -> None:
    (area / "rootfs").mkdir()
    rootfs = str(area / "rootfs")
    mounts = [Mount("tmpfs", "tmpfs", "", ()), Mount("tmpfs", "tmpfs", "/a", ()),
              Mount("bind", str(area / "does-not-exist"), "/b", ("rbind",))]
    with pytest.raises(MountError) as info:
        mount_all(mounts, rootfs)
    assert rootfs + "/b" in str(info.value)
    assert not any(m.mountpoint.startswith(rootfs) for m in mountinfo())


def test_mount_all_rejects_escaping_destination(tmp_path) -> None:
    with pytest.raises(InvalidArgument):
        mount_all([Mount("tmpfs", "tmpfs", "../../etc", ())], str(tmp_path))


@root_only
def test_unmount_recursive_stacked_nested_and_busy(area) -> None:
    top = area / "top"
    top.mkdir()
    mount("tmpfs", str(top), "tmpfs")
    mount("tmpfs", str(top), "tmpfs")  # stacked on the same point
    (top / "a" / "b").mkdir(parents=True)
    mount("tmpfs", str(top / "a"), "tmpfs")
    (top / "a" / "b").mkdir()
    mount("tmpfs", str(top / "a" / "b"), "tmpfs")
    (top / "a" / "b" / "with space").mkdir()
    mount("tmpfs", str(top / "a" / "b" / "with space"), "tmpfs")
    busy = open(top / "a" / "b" / "open-file", "w")
    try:
        assert unmount_recursive(str(top)) == 5
    finally:
        busy.close()
    assert not is_mountpoint(str(top))
    assert unmount_recursive(str(top)) == 0
    assert unmount_recursive(str(area / "absent")) == 0


@root_only
def test_pod_store_remove_unmounts_first(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    store = PodStore(str(tmp_path / "state"))
    store.save("p1", {"id": "p1"})
    ns = tmp_path / "state" / "p1" / "net"
    ns.mkdir()
    mount(str(outside), str(ns), "bind", ["bind"])
    store.remove("p1")
    assert not (tmp_path / "state" / "p1").exists()
    assert (outside / "precious").read_text() == "keep"
