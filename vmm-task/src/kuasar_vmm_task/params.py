"""Kernel command line parameters of vmm-task (``task.*``), as upstream Kuasar defines them."""
from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass
from typing import Any, Dict

__all__ = ["TaskParams", "parse_cmdline", "SHAREFS_TYPES"]

log = logging.getLogger(__name__)

SHAREFS_TYPES = ("9p", "virtiofs")
_LEVELS = ("trace", "debug", "info", "warn", "warning", "error")
_FLAGS = ("debug", "enable_tracing", "template")


@dataclass(frozen=True)
class TaskParams:
    log_level: str = "info"
    debug: bool = False
    sharefs_type: str = "9p"
    debug_shell: str = "/bin/sh"
    enable_tracing: bool = False
    #: booted as a VM template (``task.template``): the pod's share, entropy and NIC MACs arrive with
    #: SetupSandbox in each VM restored from it, not at boot
    template: bool = False


def parse_cmdline(text: str) -> TaskParams:
    """Read ``task.log_level=``, ``task.debug``, ``task.sharefs_type=``, ``task.debug_shell=``,
    ``task.enable_tracing`` and ``task.template`` from a kernel command line.

    PID 1 must not die on a bad parameter: an unknown value is logged and the default kept.
    """
    values: Dict[str, Any] = {}
    for word in shlex.split(text):
        key, sep, value = word.partition("=")
        if not key.startswith("task."):
            continue
        name = key[len("task."):]
        if name == "log_level" and sep:
            if value.lower() in _LEVELS:
                values["log_level"] = value.lower()
            else:
                log.warning("ignoring task.log_level=%s: expected one of %s", value, ", ".join(_LEVELS))
        elif name == "sharefs_type" and sep:
            if value in SHAREFS_TYPES:
                values["sharefs_type"] = value
            else:
                log.warning("ignoring task.sharefs_type=%s: expected 9p or virtiofs", value)
        elif name == "debug_shell" and sep and value.startswith("/"):
            values["debug_shell"] = value
        elif name in _FLAGS and not sep:
            values[name] = True
        elif name not in _FLAGS:
            log.warning("ignoring unknown kernel parameter %s", word)
    return TaskParams(**values)
