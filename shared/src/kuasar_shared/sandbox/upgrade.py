"""``kuasar-task-upgrade``: put newly installed code in place of a running task server, invisibly to the engine.

Used by the RPM's upgrade scriptlet after ``systemctl try-restart kuasar-<type>``: the restarted
sandboxer re-adopts the old task server, this command stops it gracefully, and the sandboxer starts
the installed one behind the task front (see :func:`kuasar_shared.sandbox.task_supervisor.upgrade`).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Optional, Sequence

from kuasar_shared import __version__
from kuasar_shared.daemon.args import version_string
from kuasar_shared.errors import KuasarError
from kuasar_shared.sandbox.task_supervisor import upgrade

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Exit status 0 when a new task server answers, 1 otherwise (message on stderr)."""
    parser = argparse.ArgumentParser(prog="kuasar-task-upgrade", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--version", action="version", version=version_string("kuasar-task-upgrade", __version__))
    parser.add_argument("--dir", required=True, help="the sandboxer's --dir, e.g. /run/kuasar-runc")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the new server")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="kuasar-task-upgrade: %(message)s")
    try:
        pid = asyncio.run(upgrade(args.dir, args.timeout))
    except KuasarError as err:
        print(f"kuasar-task-upgrade: {err}", file=sys.stderr)
        return 1
    print(f"kuasar-task-upgrade: task server of {args.dir} replaced, new pid {pid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
