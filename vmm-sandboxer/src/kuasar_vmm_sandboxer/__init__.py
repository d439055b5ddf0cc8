"""Kuasar's vmm sandboxer: pods as QEMU microVMs, containers run by vmm-task inside the guest.

Layout: :mod:`.config` (TOML), :mod:`.vm` (VM / VMFactory / Hooks interface), :mod:`.devices` (argv
from device dataclasses), :mod:`.hypervisors.qemu` (the QEMU adapter, QMP), :mod:`.network` (taps +
tc mirroring), :mod:`.bundle` (container preparation on the share), :mod:`.guest` (the guest agent's
SandboxService), :mod:`.sandboxer` (the pod lifecycle), :mod:`.relay` (the ``vmm-task-relay`` process).
"""
from __future__ import annotations

__version__ = "0.1.0"

from kuasar_shared.sandbox.pods import PodState  # noqa: E402
from kuasar_vmm_sandboxer.sandboxer import VmmSandboxer  # noqa: E402

__all__ = ["VmmSandboxer", "PodState", "__version__"]
