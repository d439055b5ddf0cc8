"""accel: ``auto`` picks KVM only where it can run a stock guest kernel; an explicit ``kvm`` that cannot
work fails pod creation naming the config key. The probe talks to this machine's real /dev/kvm."""
from __future__ import annotations

import logging
import os

import pytest

from kuasar_shared.errors import FailedPrecondition
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, KvmProbe, choose, probe_kvm
from kuasar_vmm_sandboxer.hypervisors.qemu.config import TCG_CPU, QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.vm import VMSpec

USABLE = KvmProbe(True, "/dev/kvm usable (KVM API 12, vmx)")
PVM = KvmProbe(False, "/dev/kvm is KVM-PVM (module kvm_pvm), which runs only PVM-enlightened guest kernels")


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nflags\t\t: fpu %s sse2\n" % flags)
    return str(path)


def test_choose_follows_the_probe_for_auto_and_never_probes_for_tcg() -> None:
    assert choose("auto", USABLE) == AccelChoice("kvm", USABLE.reason)
    assert choose("auto", PVM) == AccelChoice("tcg", "emulation, because " + PVM.reason)
    assert choose("tcg", KvmProbe(True, "unused")) == AccelChoice("tcg", "configured")
    assert choose("kvm", USABLE).error is None


def test_explicit_kvm_that_cannot_work_names_the_key_and_the_way_out() -> None:
    choice = choose("kvm", PVM)
    assert choice.accel == "kvm" and choice.error is not None
    assert '[hypervisor].accel = "kvm"' in choice.error and "KVM-PVM" in choice.error and '"auto"' in choice.error


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


def test_config_default_is_auto_and_unknown_values_are_refused() -> None:
    assert config.parse("").hypervisor.accel == "auto"
    with pytest.raises(config.ConfigError, match=r"\[hypervisor\].accel.*auto, kvm or tcg"):
        config.parse("[hypervisor]\naccel = 'kqemu'\n")


def test_factory_resolves_once_logs_why_and_refuses_pods_when_kvm_cannot_work(caplog, tmp_path) -> None:
    caplog.set_level(logging.INFO)
    auto = QemuFactory(QemuConfig(accel="auto"), PVM)
    assert auto.config.accel == "tcg" and auto.config.cpu == TCG_CPU
    assert "accel auto -> tcg: emulation, because /dev/kvm is KVM-PVM" in caplog.text
    assert auto.create(VMSpec("p1", str(tmp_path), 1, 256)).config.accel == "tcg"
    forced = QemuFactory(QemuConfig(accel="kvm"), PVM)
    with pytest.raises(FailedPrecondition, match=r'sandbox p2: \[hypervisor\].accel = "kvm" cannot work'):
        forced.create(VMSpec("p2", str(tmp_path), 1, 256))
    assert QemuFactory(QemuConfig(accel="auto"), USABLE).config.cpu == "host"
