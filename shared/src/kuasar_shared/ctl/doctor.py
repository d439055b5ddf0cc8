"""``kuasar-ctl doctor [--type T]``: preflight of this host for every installed sandbox type.

The host part (cgroups) is checked once; then, per type found in the ``kuasar.doctor`` entry-point group
(each sandboxer package registers its own), the type's own checks, its socket and state directory, the
engine configuration naming its socket and containerd's shim entry point. Exit status 1 when any check
fails, 0 otherwise (warnings included).
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence, TextIO

from kuasar_shared.doctor import (ENTRY_POINT_GROUP, Finding, Status, TypeChecks, cgroup_findings,
                                  containerd_findings, isulad_findings, sandboxer_options, shim_findings,
                                  socket_findings)

__all__ = ["installed_types", "run_doctor"]


def installed_types() -> dict[str, TypeChecks]:
    """Sandbox type -> its checks, for every sandboxer package installed in this environment."""
    from importlib.metadata import entry_points

    found = entry_points()
    group = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, ())
    return {ep.name: ep.load() for ep in sorted(group, key=lambda ep: ep.name)}


def _print(out: TextIO, findings: Sequence[Finding]) -> None:
    width = max((len(f.subject) for f in findings), default=0)
    for f in findings:
        out.write("  %-5s %-*s  %s\n" % (f.status.value, width, f.subject, f.detail))
        if f.fix and f.status is not Status.OK:
            out.write("  %-5s %-*s  fix: %s\n" % ("", width, "", f.fix))


def run_doctor(types: Optional[Sequence[str]] = None, out: TextIO = sys.stdout,
               sysconfig_dir: str = "/etc/sysconfig") -> int:
    """Check the host, then ``types`` (default: every installed one); print the report, return the exit code."""
    installed = installed_types()
    every: list[Finding] = []
    host = cgroup_findings()
    out.write("host\n")
    _print(out, host)
    every += host
    for sandbox_type in types or sorted(installed):
        checks = installed.get(sandbox_type)
        if checks is None:
            missing = [Finding(Status.FAIL, "package", "kuasar-%s is not installed here (installed: %s)"
                               % (sandbox_type, ", ".join(sorted(installed)) or "none"),
                               "install the kuasar-%s package" % sandbox_type)]
            out.write("%s\n" % sandbox_type)
            _print(out, missing)
            every += missing
            continue
        sandboxer = sandboxer_options(sandbox_type, sysconfig_dir)
        findings = (checks(sandboxer) + socket_findings(sandboxer) + containerd_findings(sandboxer)
                    + isulad_findings(sandboxer) + shim_findings(sandbox_type))
        out.write("%s (listen %s, dir %s)\n" % (sandbox_type, sandboxer.listen, sandboxer.dir))
        _print(out, findings)
        every += findings
    counts = {s: sum(f.status is s for f in every) for s in Status}
    out.write("summary: %d ok, %d warn, %d fail\n" % (counts[Status.OK], counts[Status.WARN], counts[Status.FAIL]))
    return 1 if counts[Status.FAIL] else 0
