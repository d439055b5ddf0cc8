"""build: the real image from Debian packages (cached in the default image dir, shared by the tests)."""
import json
import os

import pytest

from kuasar_vmm_task.image import debs
from kuasar_vmm_task.image.build import INITRD_NAME, KERNEL_NAME, build
from kuasar_vmm_task.image.kernel import ImageError


def test_image_outputs_and_cache(guest_image):
    image_dir, record = guest_image
    assert record["kernel_bytes"] > 10 << 20 and record["initrd_bytes"] < 64 << 20
    with open(os.path.join(image_dir, KERNEL_NAME), "rb") as handle:
        assert handle.read(4) == b"\x7fELF"
    with open(os.path.join(image_dir, INITRD_NAME), "rb") as handle:  # uncompressed cpio
        assert handle.read(6) == b"070701"
    again = build(image_dir, os.path.join(image_dir, ".cache"))
    assert again["cached"] is True and again["digest"] == record["digest"]
    with open(os.path.join(image_dir, "kuasar-image.stamp")) as handle:
        stamp = json.load(handle)
    assert stamp["packages"]["runc"] and stamp["kernel"] == "own"
    assert any(p.startswith("linux-source-") for p in stamp["packages"])


def test_unknown_kernel_kind_is_refused(tmp_path):
    with pytest.raises(ImageError, match="unknown kernel 'fedora': expected one of own, debian"):
        build(str(tmp_path), str(tmp_path / "cache"), kernel_kind="fedora")


def test_candidates_in_one_apt_run_name_what_is_missing():
    found = debs.candidates(["runc", "busybox-static"])
    assert [p for p, _ in found] == ["runc", "busybox-static"] and all(v for _, v in found)
    with pytest.raises(ImageError, match="no candidate for no-such-package-kuasar; run apt-get update"):
        debs.candidates(["runc", "no-such-package-kuasar"])


def test_an_image_it_did_not_build_is_kept(tmp_path):
    """A kernel and initrd installed by a package (no stamp) are never overwritten without --force."""
    (tmp_path / KERNEL_NAME).write_bytes(b"packaged kernel")
    (tmp_path / INITRD_NAME).write_bytes(b"packaged initrd")
    with pytest.raises(ImageError, match=r"vmlinux.bin, .*kuasar.initrd: not built by build-image.sh .*--force"):
        build(str(tmp_path), str(tmp_path / "cache"))
    assert (tmp_path / KERNEL_NAME).read_bytes() == b"packaged kernel"
    assert (tmp_path / INITRD_NAME).read_bytes() == b"packaged initrd"
    assert not (tmp_path / "cache").exists()
