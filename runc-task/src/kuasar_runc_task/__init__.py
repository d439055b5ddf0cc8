"""Kuasar's runc task server: one process serving the Task API of every runc pod through runc."""
from __future__ import annotations

from kuasar_runc_task.backend import RuncTaskBackend

__version__ = "0.1.0"
__all__ = ["RuncTaskBackend", "__version__"]
