"""Kuasar's runc sandboxer: the Sandbox API for runc pods (namespace holders + runc-task).

Names are imported on first use (PEP 562): the ``runc-sandboxer`` program must be able to keep modules
out (``ssl``, see :mod:`kuasar_shared.daemon.notls`) before anything imports asyncio.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kuasar_runc_sandboxer.sandboxer import PodState, RuncSandboxer

__version__ = "0.1.0"
__all__ = ["RuncSandboxer", "PodState", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("RuncSandboxer", "PodState"):
        return getattr(importlib.import_module("kuasar_runc_sandboxer.sandboxer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
