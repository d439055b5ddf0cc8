"""kmod: the guest's module loader. The happy path runs in every guest boot (test_guest_vm: the agent port and
the 9p share need the modules it loads); here the parsing and the failures, through the real syscall."""
import errno
import logging
import os

import pytest

from kuasar_vmm_task import kmod
from kuasar_vmm_task.kmod import KmodError, finit_module, load_modules, module_params

MICROVM_CMDLINE = ("console=ttyS0 panic=-1 virtio_mmio.device=512@0xfeb00e00:12 task.sharefs_type=9p "
                   "virtio_mmio.device=512@0xfeb00c00:11 virtio-rng.foo=1 bridge.x=2 quiet")


def test_module_params_come_from_the_command_line():
    """``module.param=value`` words, as modprobe would pass them; dashes and underscores are one."""
    assert module_params("virtio_mmio", MICROVM_CMDLINE) == \
        "device=512@0xfeb00e00:12 device=512@0xfeb00c00:11"
    assert module_params("virtio-rng", MICROVM_CMDLINE) == "foo=1"
    assert module_params("virtio_rng", MICROVM_CMDLINE) == "foo=1"
    assert module_params("virtio_net", MICROVM_CMDLINE) == ""
    assert module_params("task", MICROVM_CMDLINE) == "sharefs_type=9p"
    assert module_params("bridge", "bridge.x bridge.=1") == "=1"


def test_a_missing_module_file_is_named(tmp_path):
    with pytest.raises(KmodError, match=r"cannot open kernel module .*/nope\.ko") as err:
        finit_module(str(tmp_path / "nope.ko"))
    assert err.value.errno == errno.ENOENT


def test_the_kernel_refusing_a_module_is_named(tmp_path):
    """Not a module at all: the real finit_module refuses it (ENOEXEC and kin; EPERM without CAP_SYS_MODULE)."""
    bogus = tmp_path / "bogus.ko"
    bogus.write_bytes(b"\x7fELF" + b"\0" * 60)
    with pytest.raises(KmodError, match=r"loading kernel module bogus\.ko \(x=1\) failed: ") as err:
        finit_module(str(bogus), "x=1")
    assert err.value.errno not in (0, errno.EEXIST)


def test_load_modules_goes_on_after_a_failure_and_removes_the_directory(tmp_path, caplog):
    mods = tmp_path / "modules"
    mods.mkdir()
    for name in ("first.ko", "second.ko"):
        (mods / name).write_bytes(b"not a module")
    (mods / kmod.ORDER_FILE).write_text("first.ko\n\nsecond.ko\n")
    with caplog.at_level(logging.ERROR, logger="kuasar_vmm_task.kmod"):
        assert load_modules(str(mods), cmdline="first.a=1") == []
    assert [r.getMessage().split(" failed")[0] for r in caplog.records] == \
        ["loading kernel module first.ko (a=1)", "loading kernel module second.ko"]
    assert not os.path.exists(mods)


def test_no_module_directory_loads_nothing(tmp_path):
    assert load_modules(str(tmp_path / "absent")) == []
