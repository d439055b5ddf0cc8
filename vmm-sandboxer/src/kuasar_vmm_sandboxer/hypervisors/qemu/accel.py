"""Which QEMU accelerator a pod VM uses: ``accel = "auto" | "kvm" | "tcg"`` decided once at start-up.

A ``/dev/kvm`` that opens is not enough: on a KVM-PVM host (module ``kvm_pvm``, no vmx/svm CPU flag)
only PVM-enlightened guest kernels run, and QEMU aborts a stock guest at its first MSR write
(``failed to set MSR 0x10a``). So KVM counts as usable only when the device answers the KVM API and a
hardware-virtualisation backend (VMX or SVM) sits behind it; ``auto`` then picks KVM, else TCG.
"""
from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from typing import Optional

__all__ = ["ACCELS", "AccelChoice", "KvmProbe", "choose", "probe_kvm"]

#: the values ``[hypervisor].accel`` accepts
ACCELS = ("auto", "kvm", "tcg")
_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12


@dataclass(frozen=True)
class KvmProbe:
    """Whether KVM can run a stock guest kernel here, and the reason in words."""

    usable: bool
    reason: str


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator pods get; ``error`` is set when the configured one cannot work (pods fail Start)."""

    accel: str
    reason: str
    error: Optional[str] = None

    def describe(self, configured: str) -> str:
        """The one start-up log line."""
        return "accel %s -> %s: %s" % (configured, self.accel, self.reason)


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
        return KvmProbe(False, "%s speaks KVM API %d, QEMU needs %d" % (device, version, _KVM_API_VERSION))
    if os.path.isdir(os.path.join(sys_module, "kvm_pvm")):
        return KvmProbe(False, "%s is KVM-PVM (module kvm_pvm), which runs only PVM-enlightened guest kernels"
                        % device)
    flags = _cpu_flags(cpuinfo)
    hardware = sorted(flags & {"vmx", "svm"})
    if not hardware:
        return KvmProbe(False, "the CPU offers neither vmx nor svm, so %s cannot run a stock guest kernel" % device)
    return KvmProbe(True, "%s usable (KVM API %d, %s)" % (device, version, hardware[0]))


def choose(configured: str, probe: Optional[KvmProbe] = None) -> AccelChoice:
    """The accelerator for ``[hypervisor].accel = configured`` (one of :data:`ACCELS`)."""
    if configured == "tcg":
        return AccelChoice("tcg", "configured")
    probe = probe if probe is not None else probe_kvm()
    if configured == "kvm":
        if probe.usable:
            return AccelChoice("kvm", "configured; " + probe.reason)
        return AccelChoice("kvm", "configured, but " + probe.reason,
                           error='[hypervisor].accel = "kvm" cannot work on this host: %s; set accel = "auto" '
                                 '(or "tcg") to emulate instead' % probe.reason)
    if probe.usable:
        return AccelChoice("kvm", probe.reason)
    return AccelChoice("tcg", "emulation, because " + probe.reason)
