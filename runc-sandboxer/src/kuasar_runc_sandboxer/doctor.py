"""``kuasar-ctl doctor --type runc``: the OCI runtime runc pods run with."""
from __future__ import annotations

from kuasar_shared.doctor import Finding, Sandboxer, binary_version


def checks(sandboxer: Sandboxer) -> list[Finding]:
    return [binary_version("runc", "runc", fix="install runc (apt/dnf install runc)")]
