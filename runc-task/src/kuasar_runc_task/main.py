"""``runc-task``: wiring only — the shared task server (kuasar_shared.task.main) over runc."""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not load ssl)
import argparse
import sys
from typing import Optional, Sequence

from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.main import run_task_server

from kuasar_runc_task import __version__
from kuasar_runc_task.backend import RuncTaskBackend

NAME = "runc-task"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", default="runc", metavar="BINARY", help="OCI runtime (default: runc)")


async def _open_backend(args: argparse.Namespace, hub: StreamingHub,
                        exits: Optional[ExitRecorder]) -> RuncTaskBackend:
    backend = RuncTaskBackend(args.dir, pods_dir=args.pods_dir, binary=args.runtime, hub=hub, exits=exits)
    await backend.recover()
    return backend


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_task_server(NAME, __version__, argv, listen="/run/kuasar-runc/task.sock",
                           directory="/run/kuasar-runc/tasks", pods_dir="",
                           pods_dir_help="runc-sandboxer's --dir, where pods pin their namespaces",
                           description="Task API server for every runc pod (started by runc-sandboxer)",
                           open_backend=_open_backend, add_arguments=_add_arguments)


if __name__ == "__main__":
    sys.exit(main())
