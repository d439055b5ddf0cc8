"""Command line shared by every sandboxer, compatible with upstream Kuasar's clap arguments.

Upstream binaries take ``--listen/-l``, ``--dir/-d``, ``--config/-c``, ``--log-level`` and
``--version/-v``; we add ``--daemon`` for hosts without systemd. Defaults come from the sandbox
type (``/run/<type>-sandboxer.sock``, ``/run/kuasar-<type>``), so each ``main()`` only names it.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from kuasar_shared.daemon.log import LEVELS

__all__ = ["version_string", "default_listen", "default_dir", "build_parser", "parse_args"]


def version_string(name: str, version: str) -> str:
    """What ``--version`` prints: ``<name> <version>``."""
    return "%s %s" % (name, version)


def default_listen(sandbox_type: str) -> str:
    return "/run/%s-sandboxer.sock" % sandbox_type


def default_dir(sandbox_type: str) -> str:
    return "/run/kuasar-%s" % sandbox_type


def _level(value: str) -> str:
    level = value.strip().lower()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError("invalid log level %r (choose from %s)" % (value, ", ".join(LEVELS)))
    return level


def build_parser(name: str, version: str, *, listen: str, dir: str, config: Optional[str] = None,
                 description: Optional[str] = None) -> argparse.ArgumentParser:
    """A parser with the common options; callers may add their own before parsing.

    Parsed attributes: ``listen``, ``dir``, ``config`` (None when the daemon has no default and
    none was given), ``log_level`` (lower-case: trace, debug, info, warn, error), ``daemon``.
    """
    parser = argparse.ArgumentParser(prog=name, description=description)
    parser.add_argument("-v", "--version", action="version", version=version_string(name, version))
    parser.add_argument("-l", "--listen", default=listen, metavar="PATH",
                        help="unix socket of the Sandbox API (default: %(default)s)")
    parser.add_argument("-d", "--dir", default=dir, metavar="DIR",
                        help="directory for per-pod state (default: %(default)s)")
    parser.add_argument("-c", "--config", default=config, metavar="FILE",
                        help="TOML configuration file (default: %(default)s)")
    parser.add_argument("--log-level", default="info", type=_level, metavar="LEVEL",
                        help="trace, debug, info, warn or error (default: %(default)s)")
    parser.add_argument("--daemon", action="store_true",
                        help="detach from the terminal and run in the background (no systemd)")
    return parser


def parse_args(name: str, version: str, argv: Optional[Sequence[str]] = None, *, sandbox_type: str,
               config: Optional[str] = None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the defaults of ``sandbox_type``.

    ``--version`` prints :func:`version_string` and exits 0; bad arguments exit 2 (argparse).
    """
    parser = build_parser(name, version, listen=default_listen(sandbox_type), dir=default_dir(sandbox_type),
                          config=config)
    parser.add_argument("--metrics-listen", default="", metavar="ADDR",
                        help="serve Prometheus metrics at http://ADDR/metrics: HOST:PORT (127.0.0.1:9610) or "
                             "unix:/path (default: off)")
    parser.add_argument("--trace-endpoint", default="", metavar="URL",
                        help="export OpenTelemetry spans to this OTLP/gRPC collector, e.g. http://127.0.0.1:4317 "
                             "(default: off)")
    return parser.parse_args(argv)
