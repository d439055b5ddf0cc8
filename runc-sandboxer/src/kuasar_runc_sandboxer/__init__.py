"""Kuasar's runc sandboxer: the Sandbox API for runc pods (namespace holders + runc-task)."""
from __future__ import annotations

from kuasar_runc_sandboxer.sandboxer import PodState, RuncSandboxer

__version__ = "0.1.0"
__all__ = ["RuncSandboxer", "PodState", "__version__"]
