"""Logging set-up shared by the daemons, with upstream's level names.

Upstream Kuasar takes ``--log-level trace|debug|info|warn|error``; ``trace`` maps to a level below
DEBUG. Under systemd (``$JOURNAL_STREAM`` set) lines carry no timestamp, the journal adds one.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import IO, Optional

from kuasar_shared.errors import InvalidArgument

__all__ = ["TRACE", "LEVELS", "level_of", "setup_logging"]

TRACE = 5
_installed: list[logging.Handler] = []

LEVELS = {"trace": TRACE, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
          "warning": logging.WARNING, "error": logging.ERROR}

logging.addLevelName(TRACE, "TRACE")


def level_of(name: str) -> int:
    """The :mod:`logging` level for an upstream level name (case-insensitive).

    :raise InvalidArgument: for an unknown name.
    """
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise InvalidArgument("invalid log level %r: expected one of trace, debug, info, warn, error"
                              % name) from None


def setup_logging(level: str = "info", *, stream: Optional[IO[str]] = None, filename: Optional[str] = None,
                  name: str = "") -> logging.Handler:
    """Configure the root logger once: one handler to ``filename`` or ``stream`` (default stderr).

    Earlier handlers installed by this function are replaced, so calling it again (after
    daemonizing, in tests) does not duplicate lines.

    :raise InvalidArgument: for an unknown level name.
    :return: the installed handler (closed by the next call or at interpreter exit).
    """
    lvl = level_of(level)
    handler: logging.Handler
    if filename is not None:
        handler = logging.FileHandler(filename)
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    prefix = "%s " % name if name else ""
    if os.environ.get("JOURNAL_STREAM") and filename is None:
        fmt = prefix + "%(levelname)s %(name)s: %(message)s"
    else:
        fmt = "%(asctime)s " + prefix + "%(levelname)s %(name)s: %(message)s"
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    while _installed:
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(lvl)
    return handler
