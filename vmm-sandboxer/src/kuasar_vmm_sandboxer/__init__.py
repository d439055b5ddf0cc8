"""Kuasar's vmm sandboxer: pods as QEMU microVMs, containers run by vmm-task inside the guest.

Layout: :mod:`.config` (TOML), :mod:`.vm` (VM / VMFactory / Hooks interface), :mod:`.devices` (argv
from device dataclasses), :mod:`.hypervisors.qemu` (the QEMU adapter, QMP), :mod:`.network` (taps +
tc mirroring), :mod:`.bundle` (container preparation on the share), :mod:`.guest` (the guest agent's
SandboxService), :mod:`.sandboxer` (the pod lifecycle), :mod:`.relay` (the ``vmm-task-relay`` process).
Nothing is imported here: the relay process loads only what it uses (no gRPC, no pyroute2).
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
