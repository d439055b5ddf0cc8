"""The host's TSC frequency, which a ``microvm`` guest under TCG must be told (``tsc_early_khz=``).

Under TCG the guest reads the host's time stamp counter, but its kernel still calibrates the rate at
boot: against the i8254 PIT, with the HPET or the ACPI PM timer as references. The PIT calibration is
timing-sensitive and failed in 12 of 16 boots under emulation here (2 busy cores); q35 then falls
back to its HPET, but ``microvm`` has neither HPET nor PM timer, so the kernel marks the TSC unusable
("tsc: Marking TSC unstable due to could not calculate TSC khz") and hangs before it reaches user space.
``tsc_early_khz=`` skips the calibration. Under KVM the guest gets the rate from kvmclock instead.
"""
from __future__ import annotations

import os
import re

from kuasar_shared.errors import FailedPrecondition

__all__ = ["host_tsc_khz"]

_MHZ = re.compile(r"^cpu MHz\s*:\s*([0-9]+(?:\.[0-9]+)?)\s*$", re.MULTILINE)
_FLAGS = re.compile(r"^flags\s*:(.*)$", re.MULTILINE)
_ADVICE = "add tsc_early_khz=<host TSC kHz> to [hypervisor].kernel_params"


def host_tsc_khz(cpuinfo: str = "/proc/cpuinfo", cpufreq_dir: str = "/sys/devices/system/cpu/cpu0/cpufreq") -> int:
    """The host TSC rate in kHz, from the first CPU's ``cpu MHz`` in ``/proc/cpuinfo``.

    That line is the kernel's calibrated TSC rate (cpu_khz) only when it has no measured CPU
    frequency to show instead: no cpufreq driver and no APERF/MPERF counters, which is the case in
    the virtual machines where TCG is used. The TSC must also tick at a constant rate.

    :raise FailedPrecondition: the host does not say (message tells how to give it in the config).
    """
    try:
        with open(cpuinfo) as handle:
            text = handle.read()
    except OSError as err:
        raise FailedPrecondition(f"cannot read {cpuinfo} for the host TSC rate ({err}); {_ADVICE}") from err
    mhz, flags = _MHZ.search(text), _FLAGS.search(text)
    words = set(flags.group(1).split()) if flags else set()
    if mhz is None or "constant_tsc" not in words:
        raise FailedPrecondition(f"{cpuinfo} gives no constant TSC rate; {_ADVICE}")
    if "aperfmperf" in words or os.path.isdir(cpufreq_dir):
        raise FailedPrecondition(f"{cpuinfo} shows the measured CPU frequency here (cpufreq or APERF/MPERF), "
                                 f"not the TSC rate; {_ADVICE}")
    return round(float(mhz.group(1)) * 1000)
