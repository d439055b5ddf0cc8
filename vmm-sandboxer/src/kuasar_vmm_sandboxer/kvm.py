"""Whether KVM can run a stock guest kernel on this host, checked once when the sandboxer starts.

A ``/dev/kvm`` that opens is not enough: on a KVM-PVM host (module ``kvm_pvm``, no vmx/svm CPU flag)
only PVM-enlightened guest kernels run, and a hypervisor aborts a stock guest at its first MSR write
(QEMU: ``failed to set MSR 0x10a``). So KVM counts as usable only when the device answers the KVM API and
a hardware-virtualisation backend (VMX or SVM) sits behind it. QEMU falls back to TCG without it
(:mod:`.hypervisors.qemu.accel`); StratoVirt and Cloud Hypervisor cannot run at all.
"""
from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

__all__ = ["KvmProbe", "probe_kvm"]

_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12


@dataclass(frozen=True)
class KvmProbe:
    """Whether KVM can run a stock guest kernel here, and the reason in words."""

    usable: bool
    reason: str


def _cpu_flags(cpuinfo: str) -> set[str]:
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def probe_kvm(device: str = "/dev/kvm", sys_module: str = "/sys/module", cpuinfo: str = "/proc/cpuinfo") -> KvmProbe:
    """Check ``device`` answers the KVM API and a VMX/SVM backend (not KVM-PVM) serves it."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ENOENT:
            return KvmProbe(False, "%s does not exist (no KVM module loaded, or no virtualisation for this "
                                   "machine)" % device)
        return KvmProbe(False, "cannot open %s: %s" % (device, err.strerror))
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as err:
        return KvmProbe(False, "%s does not answer the KVM API (%s)" % (device, err.strerror))
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return KvmProbe(False, "%s speaks KVM API %d, hypervisors need %d" % (device, version, _KVM_API_VERSION))
    if os.path.isdir(os.path.join(sys_module, "kvm_pvm")):
        return KvmProbe(False, "%s is KVM-PVM (module kvm_pvm), which runs only PVM-enlightened guest kernels"
                        % device)
    flags = _cpu_flags(cpuinfo)
    hardware = sorted(flags & {"vmx", "svm"})
    if not hardware:
        return KvmProbe(False, "the CPU offers neither vmx nor svm, so %s cannot run a stock guest kernel" % device)
    return KvmProbe(True, "%s usable (KVM API %d, %s)" % (device, version, hardware[0]))
