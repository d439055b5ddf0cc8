"""kbuild: the fragment's options are checked against the final configuration, builds are cached by source
version and fragment, and a failed step says what failed. The real build runs in the guest_image fixture."""
import os

import pytest

from kuasar_vmm_task.image import kbuild
from kuasar_vmm_task.image.kernel import ImageError

CONFIG = """#
# Linux/x86 6.1.0 Kernel Configuration
#
CONFIG_64BIT=y
CONFIG_LOCALVERSION="-kuasar"
# CONFIG_MODULES is not set
CONFIG_NR_CPUS=64
"""


def test_fragment_options_read_values_and_not_set_lines() -> None:
    assert kbuild.fragment_options(CONFIG) == {"CONFIG_64BIT": "y", "CONFIG_LOCALVERSION": '"-kuasar"',
                                               "CONFIG_MODULES": "n", "CONFIG_NR_CPUS": "64"}


def test_options_lost_by_olddefconfig_are_named() -> None:
    wanted = {"CONFIG_64BIT": "y", "CONFIG_MODULES": "n", "CONFIG_VIRTIO_FS": "y", "CONFIG_NR_CPUS": "8",
              "CONFIG_ABSENT_AND_OFF": "n"}
    assert kbuild.config_mismatches(wanted, CONFIG) == ["CONFIG_NR_CPUS=8 (got 64)", "CONFIG_VIRTIO_FS=y (got n)"]


def test_shipped_fragment_builds_everything_in() -> None:
    with open(kbuild.FRAGMENT) as handle:
        options = kbuild.fragment_options(handle.read())
    assert options["CONFIG_PVH"] == "y" and options["CONFIG_BPF_JIT"] == "y"
    for driver in ("VIRTIO_PCI", "VIRTIO_MMIO", "VIRTIO_CONSOLE", "NET_9P_VIRTIO", "9P_FS", "VIRTIO_FS",
                   "VIRTIO_VSOCKETS", "OVERLAY_FS", "VIRTIO_NET", "VIRTIO_BLK", "HW_RANDOM_VIRTIO", "BRIDGE"):
        assert options["CONFIG_" + driver] == "y", driver


def test_a_cached_build_is_used_without_fetching(tmp_path) -> None:
    """The cache is keyed by package, version and fragment: a hit needs neither apt nor a compiler."""
    (tmp_path / ("vmlinux-" + kbuild.build_key("linux-source-test", "1.0"))).write_bytes(b"\x7fELF cached")
    assert kbuild.kernel("linux-source-test", "1.0", str(tmp_path / "debs"), str(tmp_path)) == b"\x7fELF cached"
    assert not (tmp_path / "debs").exists()


def test_the_build_key_follows_the_version_and_the_fragment(tmp_path, monkeypatch) -> None:
    key = kbuild.build_key("linux-source-6.1", "6.1.1-1")
    assert key != kbuild.build_key("linux-source-6.1", "6.1.2-1")
    fragment = tmp_path / "kernel.config"
    fragment.write_text("CONFIG_64BIT=y\n")
    monkeypatch.setattr(kbuild, "FRAGMENT", str(fragment))
    assert kbuild.build_key("linux-source-6.1", "6.1.1-1") != key


def test_a_missing_tool_and_a_failed_step_are_named(tmp_path) -> None:
    log = str(tmp_path / "build.log")
    with pytest.raises(ImageError, match="kuasar-no-such-tool is not installed"):
        kbuild._run(["kuasar-no-such-tool"], str(tmp_path), log)
    with pytest.raises(ImageError, match=r"(?s)sh -c echo broken; exit 3 failed \(exit 3\).*broken"):
        kbuild._run(["sh", "-c", "echo broken; exit 3"], str(tmp_path), log)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(kbuild.ENV_KERNEL_CACHE, str(tmp_path / "k"))
    assert kbuild.cache_dir(str(tmp_path / "image-cache")) == str(tmp_path / "k")
    monkeypatch.delenv(kbuild.ENV_KERNEL_CACHE)
    chosen = kbuild.cache_dir(str(tmp_path / "image-cache"))
    assert chosen in ("/var/cache/kuasar/guest-kernel", str(tmp_path / "image-cache" / "kernel"))
    assert os.path.isabs(chosen)
