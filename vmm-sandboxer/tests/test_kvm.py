"""The KVM probe against this machine's real /dev/kvm, with a stand-in module dir and cpuinfo where its answer
depends on them."""
from __future__ import annotations

import os

import pytest

from kuasar_vmm_sandboxer.hypervisors.qemu.accel import choose
from kuasar_vmm_sandboxer.kvm import KvmProbe, probe_kvm


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu %s sse2\n" % flags)
    return str(path)


def test_missing_device_and_a_file_that_is_not_kvm(tmp_path) -> None:
    missing = probe_kvm(str(tmp_path / "kvm"))
    assert not missing.usable and "does not exist" in missing.reason
    (tmp_path / "notkvm").write_bytes(b"")
    impostor = probe_kvm(str(tmp_path / "notkvm"))
    assert not impostor.usable and "does not answer the KVM API" in impostor.reason


@pytest.fixture
def kvm_device() -> str:
    if not os.path.exists("/dev/kvm"):
        pytest.skip("/dev/kvm cannot exist on this machine (no virtualisation offered to it)")
    return "/dev/kvm"


def test_backend_decides_between_hardware_kvm_and_pvm(kvm_device, tmp_path) -> None:
    """The real device answers the KVM API; what stands behind it decides usability."""
    modules = tmp_path / "module"
    modules.mkdir()
    assert probe_kvm(kvm_device, str(modules), _cpuinfo(tmp_path, "vmx")) == \
        KvmProbe(True, "/dev/kvm usable (KVM API 12, vmx)")
    no_hw = probe_kvm(kvm_device, str(modules), _cpuinfo(tmp_path, "pae"))
    assert not no_hw.usable and "neither vmx nor svm" in no_hw.reason
    (modules / "kvm_pvm").mkdir()
    pvm = probe_kvm(kvm_device, str(modules), _cpuinfo(tmp_path, "vmx"))
    assert not pvm.usable and "KVM-PVM" in pvm.reason


def test_this_host(kvm_device) -> None:
    """On this machine's KVM-PVM, auto means TCG; on a VMX/SVM host it means KVM."""
    probe = probe_kvm()
    assert probe.usable == (not os.path.isdir("/sys/module/kvm_pvm") and
                            any(f in open("/proc/cpuinfo").read().split() for f in ("vmx", "svm")))
    assert choose("auto").accel == ("kvm" if probe.usable else "tcg")
