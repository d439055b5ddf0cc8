"""Which QEMU accelerator a pod VM uses: ``accel = "auto" | "kvm" | "tcg"`` decided once at start-up:
``auto`` picks KVM when :func:`kuasar_vmm_sandboxer.kvm.probe_kvm` finds it usable, else TCG.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from kuasar_vmm_sandboxer.kvm import KvmProbe, probe_kvm

# KvmProbe and probe_kvm stay importable from here, where they were first
__all__ = ["ACCELS", "AccelChoice", "KvmProbe", "choose", "probe_kvm"]

#: the values ``[hypervisor].accel`` accepts
ACCELS = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator pods get; ``error`` is set when the configured one cannot work (pods fail Start)."""

    accel: str
    reason: str
    error: Optional[str] = None

    def describe(self, configured: str) -> str:
        """The one start-up log line."""
        return "accel %s -> %s: %s" % (configured, self.accel, self.reason)


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
