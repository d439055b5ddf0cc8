"""accel: ``auto`` picks KVM only where it can run a stock guest kernel; an explicit ``kvm`` that cannot
work fails pod creation naming the config key (the probe itself: ``tests/test_kvm.py``)."""
from __future__ import annotations

import logging

import pytest

from kuasar_shared.errors import FailedPrecondition
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import AccelChoice, KvmProbe, choose
from kuasar_vmm_sandboxer.hypervisors.qemu.config import TCG_CPU, QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.vm import VMSpec

USABLE = KvmProbe(True, "/dev/kvm usable (KVM API 12, vmx)")
PVM = KvmProbe(False, "/dev/kvm is KVM-PVM (module kvm_pvm), which runs only PVM-enlightened guest kernels")


def test_choose_follows_the_probe_for_auto_and_never_probes_for_tcg() -> None:
    assert choose("auto", USABLE) == AccelChoice("kvm", USABLE.reason)
    assert choose("auto", PVM) == AccelChoice("tcg", "emulation, because " + PVM.reason)
    assert choose("tcg", KvmProbe(True, "unused")) == AccelChoice("tcg", "configured")
    assert choose("kvm", USABLE).error is None


def test_explicit_kvm_that_cannot_work_names_the_key_and_the_way_out() -> None:
    choice = choose("kvm", PVM)
    assert choice.accel == "kvm" and choice.error is not None
    assert '[hypervisor].accel = "kvm"' in choice.error and "KVM-PVM" in choice.error and '"auto"' in choice.error


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
