"""``kuasar-ctl doctor --type runc``: the OCI runtime runc pods run with, and the native helper that forks
their namespace holders."""
from __future__ import annotations

from kuasar_shared.doctor import Finding, Sandboxer, Status, binary_version

from kuasar_runc_sandboxer.holder import executable


def checks(sandboxer: Sandboxer) -> list[Finding]:
    findings = [binary_version("runc", "runc", fix="install runc (apt/dnf install runc)")]
    try:
        findings.append(Finding(Status.OK, "sandbox-parent helper", executable()))
    except FileNotFoundError as err:
        findings.append(Finding(Status.FAIL, "sandbox-parent helper", str(err),
                                "reinstall kuasar-runc-sandboxer with a C compiler "
                                "(it builds native/sandbox_parent.c)"))
    return findings
