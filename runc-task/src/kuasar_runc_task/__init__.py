"""Kuasar's runc task server: one process serving the Task API of every runc pod through runc.

Names are imported on first use (PEP 562): the ``runc-task`` program must be able to keep modules out
(``ssl``, see :mod:`kuasar_shared.daemon.notls`) before anything imports asyncio.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kuasar_runc_task.backend import RuncTaskBackend

__version__ = "0.1.0"
__all__ = ["RuncTaskBackend", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "RuncTaskBackend":
        return importlib.import_module("kuasar_runc_task.backend").RuncTaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
