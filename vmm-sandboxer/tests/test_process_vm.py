"""ProcessVMFactory: a backend that needs KVM (StratoVirt, Cloud Hypervisor: neither can emulate) asks once, at
start-up, whether this host's KVM can run a guest; without it every pod's Start fails naming ``[hypervisor]
type`` and why. The probe is injected, as the sandboxer's would be on a host without KVM."""
from __future__ import annotations

import logging

import pytest

from kuasar_shared.errors import FailedPrecondition
from kuasar_vmm_sandboxer import config, hypervisors, process_vm
from kuasar_vmm_sandboxer.kvm import KvmProbe
from kuasar_vmm_sandboxer.vm import VMSpec

NEEDS_KVM = ["stratovirt", "cloud-hypervisor"]
PVM = KvmProbe(False, "/dev/kvm is KVM-PVM (module kvm_pvm), which runs only PVM-enlightened guest kernels")
USABLE = KvmProbe(True, "/dev/kvm usable (KVM API 12, vmx)")


def _hypervisor(name: str) -> config.HypervisorConfig:
    return config.parse('[hypervisor]\ntype = "%s"\n' % name).hypervisor


@pytest.mark.parametrize("name", NEEDS_KVM)
def test_without_kvm_every_start_fails_naming_the_type_and_why(name: str, caplog, tmp_path) -> None:
    caplog.set_level(logging.INFO)
    factory = hypervisors.backend(name).factory(_hypervisor(name), kvm=PVM)
    assert [r.levelno for r in caplog.records] == [logging.ERROR] and "KVM-PVM" in caplog.text
    for pod in ("p1", "p2"):
        with pytest.raises(FailedPrecondition, match=r'sandbox %s: \[hypervisor\] type = "%s" needs KVM '
                                                     r'\(it cannot emulate\), and /dev/kvm is KVM-PVM .*'
                                                     r'use type = "qemu"' % (pod, name)):
            factory.create(VMSpec(pod, str(tmp_path), 1, 256))


@pytest.mark.parametrize("name", NEEDS_KVM)
def test_with_kvm_pods_get_their_vm(name: str, caplog, tmp_path) -> None:
    caplog.set_level(logging.INFO)
    factory = hypervisors.backend(name).factory(_hypervisor(name), kvm=USABLE)
    assert factory.create(VMSpec("p1", str(tmp_path), 1, 256)).spec.id == "p1"
    assert '[hypervisor] type = "%s": KVM: /dev/kvm usable' % name in caplog.text


def test_the_host_is_probed_once_and_only_for_a_backend_that_needs_kvm(monkeypatch, tmp_path) -> None:
    probes: list[KvmProbe] = []
    monkeypatch.setattr(process_vm, "probe_kvm", lambda: probes.append(PVM) or PVM)
    factory = hypervisors.backend("stratovirt").factory(_hypervisor("stratovirt"))
    for pod in ("p1", "p2"):
        with pytest.raises(FailedPrecondition):
            factory.create(VMSpec(pod, str(tmp_path), 1, 256))
    assert len(probes) == 1
    hypervisors.backend("qemu").factory(_hypervisor("qemu"))  # QEMU decides through accel instead
    assert len(probes) == 1
