"""``quark-task``: wiring only — the shared task server (kuasar_shared.task.main) for runsc pods."""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not load ssl)
import argparse
import sys
from typing import Optional, Sequence

from kuasar_shared.io import StreamingHub
from kuasar_shared.oci.task import OciTaskBackend
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.main import run_task_server

from kuasar_quark_sandboxer import __version__
from kuasar_quark_sandboxer.hooks import RunscHooks

NAME = "quark-task"


async def _open_backend(args: argparse.Namespace, hub: StreamingHub, exits: Optional[ExitRecorder]) -> OciTaskBackend:
    backend = OciTaskBackend(args.dir, RunscHooks(args.pods_dir), hub=hub, exits=exits)
    await backend.recover()
    return backend


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_task_server(NAME, __version__, argv, listen="/run/kuasar-quark/task.sock",
                           directory="/run/kuasar-quark/.tasks", pods_dir="/run/kuasar-quark",
                           pods_dir_help="quark-sandboxer's --dir, holding each pod's sandbox.json",
                           description="Task API server for every runsc pod (started by quark-sandboxer)",
                           open_backend=_open_backend)


if __name__ == "__main__":
    sys.exit(main())
