"""Kuasar's quark sandboxer: pods whose containers share one application kernel (gVisor, Quark)."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
